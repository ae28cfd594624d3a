"""HTTP plumbing shared by the native and OpenAI routes: bodies, fields, streams, disconnects."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import json
import math
import re
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


def _replacement_character(error: UnicodeError) -> tuple[bytes, int]:
    return b"\xef\xbf\xbd" * (error.end - error.start), error.end  # U+FFFD (a str must be ASCII)


# Strings from a model file keep bytes that are not UTF-8 as lone surrogates (the GGUF
# reader's surrogateescape, so tokens keep their bytes). On the wire each such byte is
# U+FFFD, as Go's encoding/json writes invalid bytes of Ollama's strings.
codecs.register_error("pollama.replace", _replacement_character)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "pollama.replace")


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
    return parse_json_body(raw)


# How deep a request body may nest (the body object is level 1). Go's decoder allows 10000,
# Python's recursion limit about 1000 (less whatever the stack already holds), and the code
# that walks a body's parts (schemas, tool arguments, templates) recurses too: a fixed limit,
# far past any real request, keeps all of them inside the stack.
MAX_JSON_DEPTH = 100

# A \uXXXX escape of a UTF-16 surrogate: a body holding one needs a look for a lone half.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
# Integers go up to 64 bits, as in Go's structs (past that they could not even become a float).
_MIN_INT, _MAX_INT = -(1 << 63), (1 << 64) - 1


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object, or APIError(400) naming the fault.

    Refused: bytes that are not UTF-8 (as Ollama), NaN and Infinity, numbers past 64 bits or
    float64, nesting deeper than MAX_JSON_DEPTH, and lone UTF-16 surrogates ("\\ud800" with no
    partner): Python's decoder would hand them on as strings that no encoder can write back
    (Go would turn them into U+FFFD; refusing, like invalid UTF-8, keeps a request from
    meaning something else than what was sent).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "invalid request body: not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise APIError(400, f"invalid JSON in request body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"invalid JSON in request body: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise APIError(400, f"invalid JSON in request body: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "invalid request body: expected a JSON object")
    # Raw UTF-8 cannot hold a surrogate: only an escape can make one.
    _check_parsed(body, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return body


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON (Python's decoder takes them, Go's does not).
    raise APIError(400, f"invalid JSON in request body: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise APIError(400, f"invalid JSON in request body: number {text[:40]} is out of range")
    return value


def loads_checked(text: str, where: str) -> Any:
    """JSON inside a request's string (e.g. OpenAI's tool call arguments), held to the same
    rules as a body; APIError(400) naming `where` if it is not such JSON."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise APIError(400, f"invalid JSON in {where}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except APIError as e:
        raise APIError(400, e.message.replace("request body", where)) from None
    except ValueError:
        raise APIError(400, f"invalid JSON in {where}") from None
    if isinstance(value, (dict, list)):
        _check_parsed(value, where, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def _check_parsed(body: dict[str, Any] | list[Any], what: str = "request body", surrogates: bool = True) -> None:
    """Depth, integer range and (if `surrogates`) lone surrogates of parsed JSON, without
    recursion; a path is spelt out only for the message about a string at fault."""
    stack: list[tuple[Any, int, tuple | None]] = [(body, 1, None)]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"invalid JSON in {what}: nested deeper than {MAX_JSON_DEPTH} levels")
        is_dict = type(value) is dict
        for index, item in enumerate(value.values() if is_dict else value):
            kind = type(item)
            if kind is int:
                if not _MIN_INT <= item <= _MAX_INT:
                    raise APIError(400, f"invalid JSON in {what}: integer {str(item)[:20]}... is out of range")
            elif kind is dict or kind is list:
                stack.append((item, depth + 1, (path, value, index)))
            elif surrogates and kind is str and not item.isascii():
                _check_text(item, (path, value, index))
        if surrogates and is_dict:
            for key in value:
                if not key.isascii():
                    _check_text(key, path)


def _check_text(s: str, path: tuple | None) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        keys: list[str | int] = []
        while path is not None:
            path, container, index = path
            keys.append(next(itertools.islice(container, index, None)) if type(container) is dict else index)
        where = ""
        for key in reversed(keys):
            where += f"[{key}]" if isinstance(key, int) else f".{key}" if where else key
        place = f' in "{_printable(where)}"' if where else ""
        raise APIError(400, f"invalid string{place}: lone UTF-16 surrogate \\u{ord(s[e.start]):04x} "
                            "(not valid Unicode)") from None


def _printable(name: str) -> str:
    name = name if len(name) <= 80 else name[:77] + "..."
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array", dict: "an object"}


def json_type(value: Any) -> str:
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
        try:
            ok, value = True, float(value)
        except OverflowError:
            ok = False
    if kind is int and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise APIError(400, f'invalid value for "{name}": expected {_TYPE_NAMES[kind]}, got {json_type(value)}')
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


def named_sse(events: AsyncIterator[tuple[str, Any]], failure: Callable[[str], tuple[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events that each carry their type (`event: NAME` then `data: JSON`), as OpenAI's
    Responses API and Anthropic's Messages API stream. An error once the stream has begun can
    no longer change the status code: it becomes the event failure(message) gives, the last one."""
    def frame(name: str, data: Any) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for name, data in events:
                yield frame(name, data)
        except Exception as e:  # noqa: BLE001 - the stream still ends with an error event
            message = e.message if isinstance(e, APIError) else f"internal error: {type(e).__name__}: {e}"
            yield frame(*failure(message))
        finally:
            await events.aclose()

    return lines()
