"""HTTP plumbing shared by the native and OpenAI routes: bodies, fields, streams, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from pollama.server.errors import APIError

MAX_BODY_BYTES = 64 << 20  # JSON bodies (images in base64 included); blobs are streamed apart

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json_bytes(obj), status_code=status, media_type="application/json; charset=utf-8")


def now_rfc3339() -> str:
    """The time now as Ollama writes created_at (RFC 3339, UTC, sub-second)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(t: datetime) -> str:
    """A time with its offset, as Go's time.Time marshals."""
    return t.isoformat()


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object; 400 for a missing, malformed or non-object body, 413 if too big."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "missing request body")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(400, "invalid request body: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"invalid JSON in request body: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(body, dict):
        raise APIError(400, "invalid request body: expected a JSON object")
    return body


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array", dict: "an object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """body[name] checked to be of kind (null or absent gives default); 400 naming the field if not."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise APIError(400, f'invalid value for "{name}": expected {_TYPE_NAMES[kind]}, got {_json_type(value)}')
    return value


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await work, cancelling it if the client disconnects first (then ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone()


class EventStream(Response):
    """A streamed answer (NDJSON or SSE) that stops its producer as soon as the client leaves.

    The producer is an async generator of byte chunks; it is always closed (aclose) when
    the response ends, whichever way, so the runner connection behind it closes at once and
    the runner frees the sequence's slot.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str):
        # No super().__init__: that would declare a Content-Length for an empty body.
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.chunks = chunks
        self.init_headers()

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        pumping = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({pumping, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watcher):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await pumping
            with contextlib.suppress(BaseException):
                await watcher
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()


async def prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """first, then everything rest yields; rest is closed at the end whatever happens."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


async def primed(request: Request, events: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """The first event (computed before any response is sent, so its errors get a status
    code) and the stream of all events. (None, empty) when there is no event at all."""
    try:
        first = await unless_disconnected(request, events.__anext__())
    except StopAsyncIteration:
        return None, events
    except BaseException:
        await events.aclose()
        raise
    return first, prepend(first, events)
