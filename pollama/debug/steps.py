"""One sequence's forward passes, a step at a time: for tests and tools that compare logits
with a reference (transformers, llama.cpp) row by row.

Generating is ParallelEngine's job (pollama/runner/parallel.py, the one decode loop). A
StepEngine is an Engine of its own, driving sequence 0 of its cache by hand: prefill a prompt
(reusing what the cache holds of it), decode one given token, or the logits of every position.
It keeps its own record of what the cache holds, so it never shares an engine with a
ParallelEngine, whose slots keep theirs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pollama.models import multimodal
from pollama.models.multimodal import Item
from pollama.runner.engine import Engine, Part, make_batch


class StepEngine(Engine):
    """An Engine whose sequence 0 is driven one forward pass at a time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cached: list[Item] = []  # the items whose K/V sequence 0 of the cache holds
        # M-RoPE: how far the rope position of the next token is past its cache position (the
        # prompt's images moved it; the text generated after them moves both alike).
        self.rope_delta = 0

    def forward(self, items: Sequence[Item], start: int, all_logits: bool = False,
                rope: np.ndarray | None = None) -> np.ndarray:
        """Run items at positions start.. of sequence 0 through the model; the logits of the
        last one (or of every one). Nothing is recorded in `cached`."""
        batch = make_batch(self.model, [Part(0, start, items, "all" if all_logits else "last", rope)])
        plans = self.cache.plan(batch)
        try:
            return self.run(batch, plans)
        except BaseException:
            self.cache.remove(0, start, start + len(batch))  # give back the cells just claimed
            raise

    def prefill(self, prompt: Sequence[Item]) -> tuple[np.ndarray, int]:
        """Bring the cache to `prompt`, reusing a common prefix; (last logits, items evaluated)."""
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        if len(prompt) >= self.num_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.num_ctx}")
        self.check_items(prompt)
        keep = self.keep_prefix(0, self.cached, prompt)
        self.cached = list(prompt[:keep])
        rope = self.rope_positions(prompt)
        self.rope_delta = multimodal.rope_end(prompt) - len(prompt) if rope is not None else 0
        logits = None
        for start, end in self.chunks(prompt, keep):
            chunk = prompt[start:end]
            logits = self.forward(chunk, start, rope=None if rope is None else rope[start:end])
            self.cached.extend(chunk)
        return logits[-1], len(prompt) - keep

    def decode(self, token: int) -> np.ndarray:
        """Evaluate one token after the cached ones; the logits of the next position."""
        if len(self.cached) + 1 > self.num_ctx:
            raise ValueError(f"the context of {self.num_ctx} tokens is full")
        self.check_items([token])
        rope = self.decode_rope(len(self.cached), self.rope_delta)
        logits = self.forward([token], len(self.cached), rope=rope)[-1]
        self.cached.append(token)
        return logits

    def reset(self) -> None:
        """Forget the cached tokens (the next prompt is evaluated whole)."""
        self.cache.clear()
        self.cached = []
        self.rope_delta = 0

    def logits(self, items: Sequence[Item]) -> np.ndarray:
        """Logits for every position of `items` from an empty cache."""
        self.reset()
        self.check_items(items)
        rope = self.rope_positions(items)
        self.rope_delta = multimodal.rope_end(items) - len(items) if rope is not None else 0
        rows = []
        for start, end in self.chunks(items, 0):
            rows.append(self.forward(items[start:end], start, all_logits=True,
                                     rope=None if rope is None else rope[start:end]))
        self.cached = list(items)
        return np.concatenate(rows)
