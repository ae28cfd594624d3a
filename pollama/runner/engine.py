"""One loaded model: prefill in chunks, decode as a generator, counts and durations.

The engine keeps the tokens its cache holds, so a prompt that starts like the previous one
(the next turn of a chat) only evaluates what is new.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.kvcache import Batch
from pollama.ml.base import Backend
from pollama.models.base import TextModel, load_model
from pollama.runner.generation import Done, GenerateOptions, Generation, Piece
from pollama.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_BATCH = 512
MAX_GRAPHS = 4  # compute graphs kept for reuse (decode needs one at a time)
MAX_DECODE_BATCH = 16  # decode batches up to this many sequences keep their graphs


def flash_attention_default() -> bool:
    """OLLAMA_FLASH_ATTENTION, as Ollama reads it (off unless set to a true value)."""
    return os.environ.get("OLLAMA_FLASH_ATTENTION", "").strip().lower() in ("1", "true", "yes", "on")


KV_CACHE_TYPES = {"f16": GGMLType.F16, "f32": GGMLType.F32}


def kv_cache_dtype(name: str | None) -> GGMLType:
    """The K/V cache type: the argument, else OLLAMA_KV_CACHE_TYPE, else f16.

    Like Ollama, a type this engine cannot use (q8_0 and q4_0 need flash attention's quantized
    cache, not here yet) falls back to f16 with a warning rather than failing the load.
    """
    name = (name or os.environ.get("OLLAMA_KV_CACHE_TYPE", "") or "f16").strip().lower()
    if name not in KV_CACHE_TYPES:
        log.warning("KV cache type %r is not supported; using f16", name)
        return GGMLType.F16
    return KV_CACHE_TYPES[name]


def make_backend(name: str = "ggml", n_threads: int | None = None, flash_attention: bool | None = None) -> Backend:
    """A backend by name: "ggml" (production) or "torch" (reference; needs PyTorch)."""
    if name == "ggml":
        from pollama.ml.ggml.backend import GGMLBackend

        fa = flash_attention_default() if flash_attention is None else flash_attention
        return GGMLBackend(n_threads=n_threads, flash_attention=fa)
    if name == "torch":
        try:
            from pollama.ml.torch.backend import TorchBackend
        except ImportError as e:  # torch is an optional extra
            raise ValueError(f"the torch backend needs PyTorch: pip install 'pollama[torch]' ({e})") from None
        return TorchBackend(n_threads=n_threads)
    raise ValueError(f"unknown backend {name!r} (ggml or torch)")


class Engine:
    """A model, its tokenizer and its cache, ready to generate."""

    def __init__(
        self,
        path: str | Path,
        backend: str | Backend = "ggml",
        num_ctx: int = DEFAULT_NUM_CTX,
        num_batch: int = DEFAULT_NUM_BATCH,
        num_thread: int | None = None,
        kv_cache_type: str | None = None,
        num_parallel: int = 1,
    ):
        if num_ctx <= 0 or num_batch <= 0 or num_parallel <= 0:
            raise ValueError("num_ctx, num_batch and num_parallel must be positive")
        start = time.perf_counter_ns()
        self.gguf = GGUFFile(path)
        try:
            self.tokenizer = load_tokenizer(self.gguf.metadata)
            self.backend = make_backend(backend, num_thread) if isinstance(backend, str) else backend
            self.model: TextModel = load_model(self.gguf, self.backend)
        except BaseException:
            self.gguf.close()
            raise
        self.num_ctx = num_ctx  # per sequence
        self.num_batch = min(num_batch, num_ctx)
        # Room for num_parallel sequences of num_ctx tokens each (ParallelEngine uses them;
        # this class's own methods use sequence 0).
        self.cache = self.model.new_cache(
            self.backend, num_ctx, self.num_batch, n_seq=num_parallel, dtype=kv_cache_dtype(kv_cache_type)
        )
        self.cached: list[int] = []  # tokens whose K/V the cache holds for sequence 0
        self.graphs: dict[tuple, object] = {}  # reusable step contexts by shape, oldest first
        self.load_duration = time.perf_counter_ns() - start

    def close(self) -> None:
        """Free the model's memory."""
        for ctx in self.graphs.values():
            ctx.close()
        self.graphs.clear()
        self.backend.close()
        self.gguf.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- forward passes -------------------------------------------------------------------
    def _forward(self, tokens: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        """Run tokens at positions start.. through the model; logits of the last (or every) token."""
        batch = Batch.single(tokens, start, all_logits=all_logits)
        plans = self.cache.plan(batch)
        try:
            return self._run(batch, plans)
        except BaseException:
            self.cache.remove(0, start, start + len(batch))  # give back the cells just claimed
            raise

    def _run(self, batch: Batch, plans) -> np.ndarray:
        # A graph depends only on these sizes: reuse the last few (decode repeats one shape).
        key = (len(batch), len(batch.outputs), tuple(plan.n_kv for plan in plans), batch.sequence_runs())
        ctx = self.graphs.pop(key, None)
        if ctx is not None:
            self.graphs[key] = ctx  # most recently used last
            (logits,) = ctx.rerun({**batch.arrays(), **self.cache.inputs(plans)})
            return logits
        # Only decode graphs (one token per sequence, each an output) recur often enough to keep.
        ctx = self.backend.context(reusable=len(batch) == len(batch.outputs) <= MAX_DECODE_BATCH)
        try:
            self.cache.bind(ctx, plans)
            (logits,) = ctx.compute(self.model.forward(ctx, batch, self.cache))
        except BaseException:
            ctx.close()
            raise
        if not ctx.reusable:
            ctx.close()
            return logits
        self.graphs[key] = ctx
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs))).close()
        return logits

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        vocab = self.model.vocab_size
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")

    def prefill(self, prompt: Sequence[int]) -> tuple[np.ndarray, int]:
        """Bring the cache to `prompt`, reusing a common prefix; (last logits, tokens evaluated)."""
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        if len(prompt) >= self.num_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.num_ctx}")
        self._check_tokens(prompt)
        keep = 0
        for a, b in zip(self.cached, prompt):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)  # the last token is always evaluated, for its logits
        if not self.cache.can_keep(0, keep):
            keep = 0
        self.cache.remove(0, keep)
        self.cached = list(prompt[:keep])
        logits = None
        for start in range(keep, len(prompt), self.num_batch):
            chunk = prompt[start : start + self.num_batch]
            logits = self._forward(chunk, start)
            self.cached.extend(chunk)
        return logits[-1], len(prompt) - keep

    def decode(self, token: int) -> np.ndarray:
        """Evaluate one token after the cached ones; the logits of the next position."""
        if len(self.cached) + 1 > self.num_ctx:
            raise ValueError(f"the context of {self.num_ctx} tokens is full")
        self._check_tokens([token])
        logits = self._forward([token], len(self.cached))[-1]
        self.cached.append(token)
        return logits

    def reset(self) -> None:
        """Forget the cached tokens (the next prompt is evaluated whole)."""
        self.cache.clear()
        self.cached = []

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for every position of `tokens` from an empty cache (for tests and tools)."""
        self.reset()
        rows = []
        for start in range(0, len(tokens), self.num_batch):
            rows.append(self._forward(tokens[start : start + self.num_batch], start, all_logits=True))
        self.cached = list(tokens)
        return np.concatenate(rows)

    # -- generation -----------------------------------------------------------------------
    def generate(self, prompt: Sequence[int], options: GenerateOptions | None = None) -> Iterator[Piece | Done]:
        """Yield text pieces as tokens are sampled, then a Done with counts and durations."""
        options = options or GenerateOptions()
        generation = Generation(self.tokenizer, self.model.vocab_size, prompt, options)

        start = time.perf_counter_ns()
        logits, evaluated = self.prefill(prompt)
        prompt_duration = time.perf_counter_ns() - start

        start = time.perf_counter_ns()
        if options.num_predict == 0:
            generation.finish()
        while not generation.finished:
            yield from generation.step(logits)
            if generation.finished:
                break
            if len(self.cached) + 1 >= self.num_ctx:
                yield from generation.finish("length")  # going on would need a shift of the cache
                break
            logits = self.decode(generation.last_token)
        yield Done(
            done_reason=generation.done_reason,
            prompt_eval_count=evaluated,
            prompt_eval_duration=prompt_duration,
            eval_count=generation.generated,
            eval_duration=time.perf_counter_ns() - start,
            tokens=generation.history,
        )
