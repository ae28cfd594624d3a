"""Speculative decoding with a draft model: a smaller model with the same tokenizer guesses.

A model created with `DRAFT` (create/pipeline.py) carries a second, smaller model whose
tokenizer is its own. The runner loads it beside the model, as a second Engine with a
sequence per slot. For a slot that may draft (greedy, decoding alone: the same policy as prompt
lookup, see speculative.py), the draft model reads the slot's sequence and proposes k tokens
greedily, one forward pass each; the model then verifies them in one step, exactly as it
verifies prompt-lookup guesses (rows computed apart, sampled in order), so the output is that
of plain decoding whatever the draft model says.

The draft model's cache follows the sequence: before it proposes, the tokens it holds past
what the sequence shares with them (its rejected guesses, or what a context shift moved) are
dropped (Engine.keep_prefix), and the tokens it has not seen are evaluated in one batch. Its
own guesses are evaluated as it makes them, so a step of k drafts costs k draft-model passes;
with the verification's measured cost (StepCosts) that decides the length that pays, as for
prompt lookup. Until both models' steps are measured, a draft-model pass is assumed to cost
its share of the weights (decoding reads every weight once).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from pollama.ml.base import Backend
from pollama.models.base import TextModel
from pollama.models.multimodal import ImageToken, Item
from pollama.runner.engine import DEFAULT_NUM_BATCH, DEFAULT_NUM_CTX, Engine, Part, make_batch
from pollama.runner.generation import GenerateOptions
from pollama.runner.speculative import COST_SAMPLES, Drafter, PromptLookup, StepCosts, best_draft_count, drafting_allowed
from pollama.tokenizer.compare import tokenizer_mismatch

log = logging.getLogger(__name__)

# A draft model was chosen to agree with the model: it starts trusted (0.9), and is drafted
# from only where that pays; the agreement seen then decides, as for prompt lookup. Unlike a
# lookup's, a guess costs draft-model passes to make, so none is made to check the rate while
# drafting does not pay: a sequence that stopped drafting does not start again.
PRIOR_TRIED, PRIOR_AGREED = 2.0, 1.8


class DraftModel:
    """The draft model of a ParallelEngine: a sequence of its cache for each slot."""

    def __init__(self, path: str | Path, target: Engine, *, num_parallel: int = 1, num_ctx: int = DEFAULT_NUM_CTX,
                 num_batch: int = DEFAULT_NUM_BATCH, num_thread: int | None = None, kv_cache_type: str | None = None,
                 backend: str | Backend = "ggml"):
        if not isinstance(backend, str):  # an Engine closes its backend: each needs its own
            raise ValueError("a draft model needs its backend by name (ggml or torch)")
        self.engine = Engine(path, backend=backend, num_ctx=num_ctx, num_batch=num_batch, num_thread=num_thread,
                             kv_cache_type=kv_cache_type, num_parallel=num_parallel)
        # Its ids are proposed as the model's: they must name the same tokens (create checks
        # this too; a model made elsewhere is checked here).
        mismatch = tokenizer_mismatch(target.gguf.metadata, self.engine.gguf.metadata)
        if mismatch:
            self.engine.close()
            raise ValueError(f"the draft model's tokenizer is not the model's ({mismatch})")
        self.vocab_size = min(self.engine.model.vocab_size, target.model.vocab_size)
        self.cached: list[list[int]] = [[] for _ in range(num_parallel)]  # what each sequence's cache holds
        self._steps: deque[float] = deque(maxlen=COST_SAMPLES)  # seconds of one-token passes
        self._weights_share = os.path.getsize(path) / max(os.path.getsize(target.gguf.path), 1)

    def close(self) -> None:
        self.engine.close()

    def forget(self, seq: int) -> None:
        """Drop what a sequence's cache holds."""
        self.engine.cache.remove(seq)
        self.cached[seq] = []

    def can_read(self, items: Sequence[Item]) -> bool:
        """Whether the draft model can read a prompt: text only, in its vocabulary."""
        return all(not isinstance(t, ImageToken) and 0 <= t < self.vocab_size for t in items)

    def relative_step(self, target_costs: StepCosts) -> float:
        """A draft-model pass in the model's plain steps: measured, else its share of the weights."""
        if target_costs.free:
            return 0.0
        plain = target_costs.plain_seconds()
        if plain and self._steps:
            return statistics.median(self._steps) / plain
        return self._weights_share

    def propose(self, seq: int, tokens: Sequence[int], count: int) -> list[int]:
        """`count` tokens the draft model would write greedily after `tokens` (fewer if one is
        not in the model's vocabulary); its cache then holds tokens and all but the last."""
        keep = self.engine.keep_prefix(seq, self.cached[seq], tokens)
        del self.cached[seq][keep:]
        pending, drafts = list(tokens[keep:]), []
        while len(drafts) < count:
            for start, end in self.engine.chunks(pending, 0):
                logits = self._run(seq, pending[start:end])
            token = int(np.argmax(logits[-1]))
            if token >= self.vocab_size:
                break
            drafts.append(token)
            pending = [token]
        return drafts

    def _run(self, seq: int, items: list[int]) -> np.ndarray:
        cached = self.cached[seq]
        batch = make_batch(self.engine.model, [Part(seq, len(cached), items, "last")])
        plans = self.engine.cache.plan(batch)
        started = time.perf_counter()
        try:
            logits = self.engine.run(batch, plans)
        except BaseException:
            self.engine.cache.remove(seq, len(cached))
            raise
        if len(items) == 1 and self.engine.reran_graph:  # a one-token pass on a kept graph: comparable
            self._steps.append(time.perf_counter() - started)
        cached.extend(items)
        return logits


class ModelDrafter(Drafter):
    """Drafts for one sequence from the draft model, as many as pay at the rate the model has
    agreed with them so far."""

    def __init__(self, draft: DraftModel, seq: int, max_drafts: int, target_costs: StepCosts):
        super().__init__(max_drafts, draft.vocab_size)
        self.draft, self.seq, self.target_costs = draft, seq, target_costs
        self._tried, self._agreed = PRIOR_TRIED, PRIOR_AGREED
        self.failed = False

    def propose(self, tokens: Sequence[int], most: int, step_cost=None, cached=None) -> list[int]:
        if self.failed:
            return []
        step_cost = step_cost or self.target_costs.relative
        draft_step = self.draft.relative_step(self.target_costs)
        count = best_draft_count(self.acceptance, lambda k: step_cost(k) + k * draft_step, min(most, self.max_drafts))
        if count == 0:
            return []
        context = list(tokens if cached is None else [*cached, tokens[-1]])
        try:
            return self.draft.propose(self.seq, context, count)
        except Exception as e:  # the draft model failed: this sequence decodes on without it
            log.warning("draft model failed, not drafting for this sequence: %s", e)
            self.failed = True
            self.draft.forget(self.seq)
            return []


def make_drafter(options: GenerateOptions, prompt: Sequence[Item], seq: int, model: TextModel,
                 draft: DraftModel | None, target_costs: StepCosts) -> Drafter | None:
    """A generation's drafter, if it may draft (speculative.drafting_allowed): the draft model
    where there is one that can read the prompt (text only), else prompt lookup."""
    # Drafts need rows that are plain tokens at consecutive positions: not M-RoPE models
    # (an image moves the positions) nor those whose cross-attention holds one image.
    if not drafting_allowed(options) or model.uses_rope_positions or model.one_image:
        return None
    if draft is not None and draft.can_read(prompt):
        return ModelDrafter(draft, seq, options.draft_num_predict, target_costs)
    return PromptLookup(options.draft_num_predict, model.vocab_size)
