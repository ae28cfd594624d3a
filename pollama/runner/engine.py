"""One loaded model: prefill in chunks, decode as a generator, counts and durations.

The engine keeps the tokens its cache holds, so a prompt that starts like the previous one
(the next turn of a chat) only evaluates what is new.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.kvcache import Batch
from pollama.ml.base import Backend
from pollama.models.base import TextModel, load_model
from pollama.runner.stop import StopBuffer
from pollama.sample import Sampler, SamplerOptions
from pollama.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_BATCH = 512
MAX_GRAPHS = 4  # compute graphs kept for reuse (decode needs one at a time)


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


@dataclass
class GenerateOptions:
    """What one generation may do (Ollama's option names)."""

    num_predict: int = -1  # -1: until EOS or the context is full
    stop: Sequence[str] = ()
    sampler: SamplerOptions = field(default_factory=lambda: SamplerOptions(temperature=0.0))


@dataclass
class Done:
    """The final event of a generation, with Ollama's counts; durations in nanoseconds."""

    done_reason: str  # "stop" (EOS or stop string) or "length"
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    tokens: list[int]  # every token now in context: prompt + generated (Ollama's `context`)


@dataclass
class Piece:
    """Text for the caller, with the token that completed it."""

    text: str
    token: int


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
    ):
        start = time.perf_counter_ns()
        self.gguf = GGUFFile(path)
        try:
            self.tokenizer = load_tokenizer(self.gguf.metadata)
            self.backend = make_backend(backend, num_thread) if isinstance(backend, str) else backend
            self.model: TextModel = load_model(self.gguf, self.backend)
        except BaseException:
            self.gguf.close()
            raise
        if num_ctx <= 0 or num_batch <= 0:
            raise ValueError("num_ctx and num_batch must be positive")
        self.num_ctx = num_ctx
        self.num_batch = min(num_batch, num_ctx)
        self.cache = self.model.new_cache(self.backend, num_ctx, self.num_batch, dtype=kv_cache_dtype(kv_cache_type))
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
        key = (len(batch), len(batch.outputs), tuple(plan.n_kv for plan in plans))
        ctx = self.graphs.pop(key, None)
        if ctx is not None:
            self.graphs[key] = ctx  # most recently used last
            (logits,) = ctx.rerun({**batch.arrays(), **self.cache.inputs(plans)})
            return logits
        # Only single-token (decode) graphs recur often enough to be worth keeping.
        ctx = self.backend.context(reusable=len(batch) == 1)
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
        sampler = Sampler(options.sampler, self.model.vocab_size)
        stops = StopBuffer(list(options.stop))
        decoder = self.tokenizer.decoder()

        start = time.perf_counter_ns()
        logits, evaluated = self.prefill(prompt)
        prompt_duration = time.perf_counter_ns() - start

        history = list(prompt)
        generated = 0
        reason = "length"
        stopped_by_string = False
        start = time.perf_counter_ns()
        while generated != options.num_predict:  # num_predict < 0: no limit
            token = sampler.sample(logits, history)
            generated += 1
            if token in self.tokenizer.eog_ids:
                reason = "stop"
                break
            history.append(token)
            text, stopped_by_string = stops.push(decoder.feed(token))
            if text:
                yield Piece(text, token)
            if stopped_by_string:
                reason = "stop"
                break
            if generated == options.num_predict:
                break  # (checked here so the last token is not evaluated for nothing)
            if len(self.cached) + 1 >= self.num_ctx:
                break  # context full: going on would need a shift of the cache
            logits = self.decode(token)
        if not stopped_by_string:
            # Release what was held back: partial UTF-8 and text that looked like a stop's start.
            text, stopped_by_string = stops.push(decoder.flush())
            if stopped_by_string:
                reason = "stop"
            text += stops.flush()
            if text:
                yield Piece(text, history[-1])
        yield Done(
            done_reason=reason,
            prompt_eval_count=evaluated,
            prompt_eval_duration=prompt_duration,
            eval_count=generated,
            eval_duration=time.perf_counter_ns() - start,
            tokens=history,
        )
