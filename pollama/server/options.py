"""A request's options: defaults < the model's PARAMETERs < the request, typed and checked.

Unknown names are ignored (as Ollama does, with a log line); a known name with a value of
the wrong type is a 400 naming the option, and so is a value that could only crash the
runner, exhaust its memory or spin its CPU (pollama.runner.limits): num_thread beyond a
few per CPU, a context (num_ctx, num_batch) whose KV cache and attention could never fit
in this machine's memory, stop strings by the thousand or of megabytes, any integer beyond
Go's int64 (Ollama cannot decode those either). Values that are merely odd keep working as
in Ollama: a temperature of 5 or below 0 (greedy), top_k beyond the vocabulary (all),
top_p/min_p/typical_p outside [0, 1] (clamped), huge penalties, repeat_last_n of any
size (beyond the history it is the whole history); num_gpu and main_gpu do nothing in
this engine, and they and num_keep (negative: the whole prompt) take any 32-bit value.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from pollama import envconfig
from pollama.create.options import DEPRECATED_OPTIONS, OPTIONS
from pollama.runner import limits
from pollama.server.config import ServerConfig
from pollama.server.errors import APIError
from pollama.server.models import ModelRef
from pollama.server.runner import LoadSpec

log = logging.getLogger(__name__)

MAX_NUM_CTX = 1 << 20  # far beyond any model here; refuses values that could only exhaust memory
MAX_TOP_LOGPROBS = 20
_INT64 = (-(1 << 63), (1 << 63) - 1)  # Go's int: what Ollama's options decode into
_INT32 = (-(1 << 31), (1 << 31) - 1)
# Any value a C int of llama.cpp's would take is accepted, as Ollama accepts it: GPU layers
# this engine does not place, and num_keep (runner/window.py clamps it to the prompt).
_INT32_OPTIONS = ("num_gpu", "main_gpu", "num_keep")


def _typed(name: str, value: Any) -> Any:
    kind = OPTIONS[name].type
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise APIError(400, f'option "{name}" must be of type array of strings')
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise APIError(400, f'option "{name}" must be of type boolean')
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f'option "{name}" must be of type {"integer" if kind is int else "float"}')
    if not math.isfinite(value):
        raise APIError(400, f'option "{name}" must be a finite number')
    if kind is int:
        if value != int(value):
            raise APIError(400, f'option "{name}" must be of type integer')
        value = int(value)
        if not _INT64[0] <= value <= _INT64[1]:
            raise APIError(400, f'option "{name}" must be a 64-bit integer, got {value}')
        return value
    return float(value)


def _out_of_range(name: str, value: Any, allowed: str) -> APIError:
    return APIError(400, f'option "{name}" must be {allowed}, got {value}')


def _check_ranges(merged: dict[str, Any]) -> None:
    """400 for a value that could only crash, exhaust or spin the runner (see the module's note)."""
    threads = merged.get("num_thread")
    if threads is not None and not 0 <= threads <= limits.max_threads():
        raise _out_of_range("num_thread", threads, f"between 1 and {limits.max_threads()} "
                            f"({limits.MAX_THREADS_PER_CPU} per CPU), or 0 for the default")
    for name in _INT32_OPTIONS:
        value = merged.get(name)
        if value is not None and not _INT32[0] <= value <= _INT32[1]:
            raise _out_of_range(name, value, f"a 32-bit integer ({_INT32[0]} to {_INT32[1]})")
    stops = merged.get("stop")
    if stops:
        if len(stops) > limits.MAX_STOP_STRINGS:
            raise _out_of_range("stop", f"{len(stops)} strings", f"at most {limits.MAX_STOP_STRINGS} strings")
        longest = max(map(len, stops))
        if longest > limits.MAX_STOP_CHARS:
            raise _out_of_range("stop", f"a string of {longest} characters",
                                f"strings of at most {limits.MAX_STOP_CHARS} characters")


def _kv_bytes() -> int:
    # The runner's K/V type (runner/engine.py kv_cache_dtype): f32 when asked for, else f16.
    return 4 if envconfig.kv_cache_type() == "f32" else 2


def _check_memory(model: ModelRef, num_ctx: int, num_batch: int, num_parallel: int) -> None:
    """400 when the context asked for could not fit in this machine's memory at all (its K/V
    cache for every sequence and one batch's attention, beside the weights). Whether it fits
    in what is free now is the runner's check when it loads (Ollama's scheduler's, too)."""
    md, arch = model.metadata, model.arch

    def key(name: str, default: int = 0) -> int:
        value = md.get(f"{arch}.{name}", default)
        if isinstance(value, list):  # per layer (some hybrids): the largest bounds them all
            value = max((v for v in value if isinstance(v, int)), default=default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    n_layers, n_heads, dim = key("block_count"), key("attention.head_count"), key("embedding_length")
    if not (n_layers and n_heads and dim):
        return  # not a decoder we can size; the runner still checks before it allocates
    n_kv_heads = key("attention.head_count_kv", n_heads)
    k_dim = key("attention.key_length", dim // n_heads)
    v_dim = key("attention.value_length", k_dim)
    need = limits.context_memory(n_layers=n_layers, k_width=n_kv_heads * k_dim, v_width=n_kv_heads * v_dim,
                                 n_heads=n_heads, num_ctx=num_ctx, num_batch=num_batch,
                                 num_parallel=num_parallel, kv_bytes=_kv_bytes(),
                                 flash_attention=limits.flash_attention_default())
    try:
        weights = os.path.getsize(model.model_path) + (os.path.getsize(model.draft_path) if model.draft_path else 0)
    except OSError:
        weights = 0
    total = limits.memory_total()
    if weights + need > total:
        raise APIError(400, (
            f'options "num_ctx" {num_ctx} and "num_batch" {num_batch} need {limits.gib(need)} of memory for '
            f"{num_parallel} sequence(s) of KV cache and attention, beside {limits.gib(weights)} of weights: more than "
            f"this machine's {limits.gib(total)}; ask for a smaller num_ctx"))


def merge_options(model: ModelRef, request_options: object) -> dict[str, Any]:
    """The options in force for one request (without Ollama's defaults filled in)."""
    if request_options is None:
        request_options = {}
    if not isinstance(request_options, dict):
        raise APIError(400, "options must be a JSON object")
    merged: dict[str, Any] = {}
    for source in (model.params, request_options):
        for name, value in source.items():
            if name in DEPRECATED_OPTIONS:
                continue
            if name not in OPTIONS:
                log.info("ignoring unknown option %r", name)
                continue
            if value is None:
                continue
            merged[name] = _typed(name, value)
    return merged


@dataclass(frozen=True)
class RequestOptions:
    """The load-time part (a LoadSpec) and what the runner needs for one generation."""

    spec: LoadSpec
    predict: dict[str, Any]


def request_options(model: ModelRef, request_options_: object, config: ServerConfig) -> RequestOptions:
    """Merge and check; num_ctx is clamped to the model's trained context, as Ollama does."""
    merged = merge_options(model, request_options_)
    num_ctx = merged.get("num_ctx")
    if not num_ctx:  # 0 (or unset) means the server's default, as OLLAMA_CONTEXT_LENGTH=0 does
        num_ctx = config.context_length
    if not 1 <= num_ctx <= MAX_NUM_CTX:
        raise _out_of_range("num_ctx", num_ctx, f"between 1 and {MAX_NUM_CTX}, or 0 for the default")
    if model.context_length and num_ctx > model.context_length:
        num_ctx = model.context_length
    num_batch = merged.get("num_batch", envconfig.DEFAULT_NUM_BATCH)
    if num_batch < 1:  # beyond num_ctx it is num_ctx, as in Ollama
        raise _out_of_range("num_batch", num_batch, "positive")
    num_predict = merged.get("num_predict", -1)
    if num_predict < -2:
        raise _out_of_range("num_predict", num_predict, "-1 (no limit), -2 (fill the context) or at least 0")
    if num_predict < 0 or num_predict > 10 * num_ctx:
        num_predict = 10 * num_ctx  # Ollama's cap: generation ends when the context is full anyway
    _check_ranges(merged)
    num_thread = merged.get("num_thread") or None
    kind = model.kind
    num_batch = min(num_batch, num_ctx)
    # Ollama runs embedding models with one sequence.
    num_parallel = 1 if kind == "embedding" else config.num_parallel
    if kind != "embedding":  # an encoder has no KV cache, and its context is its trained one
        _check_memory(model, num_ctx, num_batch, num_parallel)
    spec = LoadSpec(
        model_path=str(model.model_path), kind=kind, num_ctx=num_ctx, num_batch=num_batch,
        num_parallel=num_parallel, num_thread=num_thread, kv_cache_type=None, backend=config.backend,
        draft_path=str(model.draft_path) if model.draft_path and kind == "completion" else None,
    )
    predict = {k: v for k, v in merged.items() if not OPTIONS[k].load_time}
    predict["num_predict"] = num_predict
    predict.setdefault("draft_num_predict", config.draft_num_predict)
    return RequestOptions(spec, predict)
