"""What the native routes share with each other and with the OpenAI and Anthropic ones: the
State (store, scheduler, settings), the body fields every request may carry, Ollama's timing
fields, and the NDJSON-or-one-object answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pollama.server.config import ServerConfig, parse_keep_alive
from pollama.server.errors import APIError
from pollama.server.generate import in_thread
from pollama.server.http import EventStream, field, json_bytes, json_response, primed, unless_disconnected
from pollama.server.models import ModelRef, resolve_model
from pollama.server.options import MAX_TOP_LOGPROBS
from pollama.server.scheduler import Scheduler
from pollama.store.store import Store

log = logging.getLogger(__name__)


class State:
    """What the routes share: the store, the scheduler and the settings.

    The scheduler is where a request gets "the runner for model X": this process's Scheduler
    (runner subprocesses), or another object with its use/unload/running/close (a cluster's,
    pollama.cluster.remote.ClusterScheduler, whose runners are Ray Serve replicas)."""

    def __init__(self, config: ServerConfig, store: Store | None = None, scheduler=None):
        self.config = config
        self.store = store or Store()
        self.scheduler = scheduler if scheduler is not None else Scheduler(config)
        # Blobs received by POST /api/blobs: the server a CLI command starts for itself deletes
        # those no model uses when it stops (serve_privately), as the store then never sees a
        # server start's prune; `pollama serve` leaves them to that prune, as Ollama does.
        self.uploads: set[str] = set()

    async def resolve(self, name: object) -> ModelRef:
        return await in_thread(_resolve_with_capabilities, self.store, name, self.config.model_files)


def _resolve_with_capabilities(store: Store, name: object, model_files: bool) -> ModelRef:
    # The capabilities parse the model's template: do it here, off the event loop, where the
    # routes would otherwise first ask for them (and warm the parse cache for the prompt).
    model = resolve_model(store, name, model_files)
    model.capabilities  # noqa: B018 - a cached_property, computed now
    return model


def keep_alive_of(body: dict[str, Any]) -> float | None:
    value = body.get("keep_alive")
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as e:
        raise APIError(400, str(e)) from None


def model_name(body: dict[str, Any]) -> str | None:
    """`model`, or the older `name`: each a string when given (as in Ollama's Go structs)."""
    model, name = field(body, "model", str), field(body, "name", str)
    return model or name


def logprob_fields(body: dict[str, Any]) -> tuple[bool, int]:
    logprobs = bool(field(body, "logprobs", bool, False))
    top = field(body, "top_logprobs", int, 0)
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return logprobs or top > 0, top


def metrics(done: dict[str, Any]) -> dict[str, Any]:
    """Ollama's timing fields from the runner's final line, then pollama's speculative-decoding
    counts (draft tokens evaluated, and accepted: generated without a step of their own)."""
    fields = {
        "total_duration": done.get("total_duration", 0),
        "load_duration": done.get("load_duration", 0),
        "prompt_eval_count": done.get("prompt_eval_count", 0),
        "prompt_eval_duration": done.get("prompt_eval_duration", 0),
        "eval_count": done.get("eval_count", 0),
        "eval_duration": done.get("eval_duration", 0),
    }
    for name in ("draft_count", "draft_accepted_count"):
        if name in done:
            fields[name] = done[name]
    return fields


async def ndjson_or_single(request: Request, events: AsyncIterator[dict[str, Any]], stream: bool,
                           combine) -> Response:
    """Stream events as NDJSON, or combine them into one JSON object. Errors before the first
    event get their status code; later ones become an {"error"} line, as Ollama sends them."""
    if not stream:
        async def collect() -> list[dict[str, Any]]:
            out = []
            try:
                async for event in events:
                    out.append(event)
            finally:
                await events.aclose()
            return out

        return json_response(combine(await unless_disconnected(request, collect())))
    _first, all_events = await primed(request, events)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for event in all_events:
                yield json_bytes(event) + b"\n"
        except APIError as e:
            yield json_bytes({"error": e.message}) + b"\n"
        except Exception as e:
            log.exception("stream failed")
            yield json_bytes({"error": f"internal error: {type(e).__name__}: {e}"}) + b"\n"
        finally:
            await all_events.aclose()

    return EventStream(lines(), "application/x-ndjson")
