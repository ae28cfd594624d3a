"""A request's options: defaults < the model's PARAMETERs < the request, typed and checked.

Unknown names are ignored (as Ollama does, with a log line); a known name with a value of
the wrong type is a 400 naming the option.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from pollama.create.options import DEPRECATED_OPTIONS, OPTIONS
from pollama.server.config import ServerConfig
from pollama.server.errors import APIError
from pollama.server.models import ModelRef
from pollama.server.runner import LoadSpec

log = logging.getLogger(__name__)

MAX_NUM_CTX = 1 << 20  # far beyond any model here; refuses values that could only exhaust memory
MAX_TOP_LOGPROBS = 20


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
        return int(value)
    return float(value)


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
    if num_ctx < 1:
        raise APIError(400, f"num_ctx must be positive, got {num_ctx}")
    if num_ctx > MAX_NUM_CTX:
        raise APIError(400, f"num_ctx {num_ctx} is beyond the limit of {MAX_NUM_CTX}")
    if model.context_length and num_ctx > model.context_length:
        num_ctx = model.context_length
    num_batch = merged.get("num_batch", 512)
    if num_batch < 1:
        raise APIError(400, f"num_batch must be positive, got {num_batch}")
    num_predict = merged.get("num_predict", -1)
    if num_predict < -2:
        raise APIError(400, f"num_predict must be -1 (no limit), -2 (fill the context) or at least 0, got {num_predict}")
    if num_predict < 0 or num_predict > 10 * num_ctx:
        num_predict = 10 * num_ctx  # Ollama's cap: generation ends when the context is full anyway
    num_thread = merged.get("num_thread") or None
    if num_thread is not None and num_thread < 0:
        raise APIError(400, f"num_thread must not be negative, got {num_thread}")
    kind = model.kind
    spec = LoadSpec(
        model_path=str(model.model_path), kind=kind, num_ctx=num_ctx, num_batch=min(num_batch, num_ctx),
        # Ollama runs embedding models with one sequence.
        num_parallel=1 if kind == "embedding" else config.num_parallel,
        num_thread=num_thread, kv_cache_type=None,
    )
    predict = {k: v for k, v in merged.items() if not OPTIONS[k].load_time}
    predict["num_predict"] = num_predict
    return RequestOptions(spec, predict)
