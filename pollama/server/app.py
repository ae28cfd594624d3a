"""The FastAPI application: Ollama's native API (this file) and OpenAI's (openai.py).

Bodies are read and checked by hand rather than by pydantic models, so that every mistake
gets Ollama's error shape ({"error": "..."}, 400) with a message naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pollama import version
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pollama.server.chat import (
    check_images,
    check_tool_calls,
    check_tools,
    message_fields,
    output_parser,
    parse_think,
    require_tools,
    require_vision,
    resolve_think,
)
from pollama.server.config import ServerConfig, parse_keep_alive
from pollama.server.errors import APIError
from pollama.server.generate import Completion, detokenize, embed, in_thread, run_completion, tokenize
from pollama.server.http import (
    ClientGone,
    EventStream,
    field,
    json_bytes,
    json_response,
    now_rfc3339,
    primed,
    read_json,
    rfc3339,
    unless_disconnected,
)
from pollama.server.models import ModelRef, full_metadata, resolve_model
from pollama.server.options import MAX_TOP_LOGPROBS, request_options
from pollama.server.prompt import chat_prompt, generate_prompt, image_tags
from pollama.server.scheduler import Scheduler
from pollama.store.errors import DigestMismatch, InvalidName, ModelNotFound, StoreError
from pollama.store.manifest import check_digest
from pollama.store.store import Store

log = logging.getLogger(__name__)


class State:
    """What the routes share: the store, the scheduler and the settings."""

    def __init__(self, config: ServerConfig, store: Store | None = None):
        self.config = config
        self.store = store or Store()
        self.scheduler = Scheduler(config)

    async def resolve(self, name: object) -> ModelRef:
        return await in_thread(_resolve_with_capabilities, self.store, name)


def _resolve_with_capabilities(store: Store, name: object) -> ModelRef:
    # The capabilities parse the model's template: do it here, off the event loop, where the
    # routes would otherwise first ask for them (and warm the parse cache for the prompt).
    model = resolve_model(store, name)
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


def create_app(config: ServerConfig | None = None, store: Store | None = None, *, host_check: bool = False) -> FastAPI:
    """The application, with its own scheduler; runners stop when it shuts down.

    host_check: refuse non-local Host headers (for a server bound to loopback).
    """
    state = State(config or ServerConfig.from_env(), store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await state.scheduler.close()

    app = FastAPI(title="pollama", version=version(), lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pollama = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        if request.url.path.startswith("/v1/"):
            from pollama.server.openai import openai_error

            return openai_error(exc.status, exc.message)
        return json_response({"error": exc.message}, exc.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return json_response({"error": "request canceled"}, 499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            # No such route (or method): gin's own plain-text answer, as Ollama gives it.
            text = "404 page not found" if exc.status_code == 404 else "405 method not allowed"
            return Response(text.encode(), exc.status_code, headers={"content-type": "text/plain"})
        return json_response({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    # -- about ------------------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return PlainTextResponse("Ollama is running")

    @app.api_route("/api/version", methods=["GET", "HEAD"])
    async def api_version() -> Response:
        return json_response({"version": version()})

    # -- generate ---------------------------------------------------------------------------
    @app.post("/api/generate")
    async def api_generate(request: Request) -> Response:
        body = await read_json(request)
        return await generate_response(state, request, body)

    @app.post("/api/chat")
    async def api_chat(request: Request) -> Response:
        body = await read_json(request)
        return await chat_response(state, request, body)

    # -- embeddings -------------------------------------------------------------------------
    @app.post("/api/embed")
    async def api_embed(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        texts = body.get("input")
        if texts is None:
            texts = []
        if isinstance(texts, str):
            texts = [texts] if texts else []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise APIError(400, 'invalid input type: "input" must be a string or an array of strings')
        truncate = field(body, "truncate", bool, True)
        dimensions = field(body, "dimensions", int, 0)
        if dimensions < 0:
            raise APIError(400, "dimensions must not be negative")
        options = request_options(model, body.get("options"), state.config)
        answer = await unless_disconnected(request, embed(
            state.scheduler, model, options, keep_alive_of(body), texts, truncate=truncate, dimensions=dimensions))
        return json_response({
            "model": body["model"], "embeddings": answer["embeddings"], "total_duration": answer["total_duration"],
            "load_duration": answer["load_duration"], "prompt_eval_count": answer["prompt_eval_count"],
        })

    @app.post("/api/embeddings")
    async def api_embeddings(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        prompt = field(body, "prompt", str, "")
        options = request_options(model, body.get("options"), state.config)
        # The legacy endpoint returns the model's own vector, not re-normalized.
        answer = await unless_disconnected(request, embed(
            state.scheduler, model, options, keep_alive_of(body), [prompt] if prompt else [], normalize=False))
        return json_response({"embedding": answer["embeddings"][0] if answer["embeddings"] else []})

    # -- tokens -----------------------------------------------------------------------------
    @app.post("/api/tokenize")
    async def api_tokenize(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        content = field(body, "content", str, "")
        options = request_options(model, body.get("options"), state.config)
        async with state.scheduler.use(model, options.spec, keep_alive_of(body)) as loaded:
            tokens = await tokenize(loaded.runner, content)
        return json_response({"model": body["model"], "tokens": tokens})

    @app.post("/api/detokenize")
    async def api_detokenize(request: Request) -> Response:
        body = await read_json(request)
        model = await state.resolve(body.get("model"))
        tokens = field(body, "tokens", list, [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise APIError(400, 'invalid value for "tokens": expected an array of integers')
        options = request_options(model, body.get("options"), state.config)
        async with state.scheduler.use(model, options.spec, keep_alive_of(body)) as loaded:
            content = await detokenize(loaded.runner, tokens)
        return json_response({"model": body["model"], "content": content})

    # -- models -----------------------------------------------------------------------------
    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def api_tags() -> Response:
        return json_response({"models": await in_thread(list_models, state.store)})

    @app.post("/api/show")
    async def api_show(request: Request) -> Response:
        body = await read_json(request)
        name = model_name(body)
        try:
            model = await state.resolve(name)
        except APIError as e:
            if e.status == 404:  # show words it its own way in Ollama
                raise APIError(404, f"model '{name}' not found") from None
            raise
        return json_response(await in_thread(show_model, model, bool(field(body, "verbose", bool, False))))

    @app.post("/api/copy")
    async def api_copy(request: Request) -> Response:
        body = await read_json(request)
        source = field(body, "source", str, "")
        destination = field(body, "destination", str, "")
        if not source or not destination:
            raise APIError(400, "source and destination are required")
        try:
            await in_thread(state.store.copy, source, destination)
        except ModelNotFound:
            raise APIError(404, f'model "{source}" not found') from None
        except (InvalidName, StoreError) as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200)

    @app.delete("/api/delete")
    async def api_delete(request: Request) -> Response:
        body = await read_json(request)
        name = model_name(body)
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        try:
            canonical = await in_thread(state.store.canonical_name, name)
            await state.scheduler.unload(canonical.display)
            await in_thread(state.store.remove, name)
        except ModelNotFound:
            raise APIError(404, f"model '{name}' not found") from None
        except InvalidName:
            raise APIError(400, f'name "{name}" is invalid') from None
        except StoreError as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200)

    @app.post("/api/create")
    async def api_create(request: Request) -> Response:
        body = await read_json(request)
        return await create_response(state, request, body)

    @app.api_route("/api/blobs/{digest}", methods=["HEAD"])
    async def blob_exists(digest: str) -> Response:
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        return Response(status_code=200 if state.store.has_blob(digest) else 404)

    @app.post("/api/blobs/{digest}")
    async def blob_upload(digest: str, request: Request) -> Response:
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        reader = _BodyReader(request, asyncio.get_running_loop())
        try:
            await in_thread(state.store.write_blob, reader, digest)
        except DigestMismatch as e:
            raise APIError(400, str(e)) from None
        except ClientGone:
            raise
        except OSError as e:
            # The store removed its partial file. The client is still sending: take the rest
            # of the body first, or it would see a reset connection instead of the answer.
            await reader.drain()
            log.warning("blob upload %s failed: %s", digest, e)
            status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            raise APIError(status, f"cannot store blob {digest}: {e.strerror or e}") from None
        return Response(status_code=201)

    @app.post("/api/pull")
    async def api_pull(request: Request) -> Response:
        return await transfer_response(state, request, await read_json(request), "pull")

    @app.post("/api/push")
    async def api_push(request: Request) -> Response:
        return await transfer_response(state, request, await read_json(request), "push")

    @app.get("/api/ps")
    async def api_ps() -> Response:
        models = []
        for loaded in state.scheduler.running():
            m = loaded.model
            models.append({
                "name": m.name, "model": m.name, "size": m.size or _file_size(m.model_path), "digest": m.digest,
                "details": m.details, "expires_at": rfc3339(loaded.until()), "size_vram": 0,
                "context_length": loaded.runner.num_ctx,
            })
        return json_response({"models": models})

    from pollama.server.anthropic import add_anthropic_routes
    from pollama.server.openai import add_openai_routes
    from pollama.server.responses import add_responses_routes
    from pollama.server.security import add_security
    from pollama.server.status import add_status_route

    add_openai_routes(app, state)
    add_responses_routes(app, state)
    add_anthropic_routes(app, state)
    add_status_route(app)
    add_security(app, host_check=host_check)
    return app


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _BodyReader:
    """A blocking read() over the request's body stream, for the store's hashing writer thread."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop):
        self.stream = request.stream().__aiter__()
        self.loop = loop
        self.buffer = b""
        self.ended = False

    async def drain(self) -> None:
        """Read and drop what is left of the body (after a failed write)."""
        self.buffer = b""
        with contextlib.suppress(Exception):
            while not self.ended:
                try:
                    await self.stream.__anext__()
                except StopAsyncIteration:
                    self.ended = True

    def read(self, n: int = -1) -> bytes:
        while not self.ended and (n < 0 or len(self.buffer) < n):
            try:
                chunk = asyncio.run_coroutine_threadsafe(self.stream.__anext__(), self.loop).result()
            except StopAsyncIteration:
                self.ended = True
                break
            except Exception as e:  # the client went away mid-upload
                raise ClientGone() from e
            self.buffer += chunk
        if n < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


# -- /api/generate and /api/chat ----------------------------------------------------------------
async def generate_response(state: State, request: Request, body: dict[str, Any]) -> Response:
    """/api/generate: checks, the load/unload special cases, then the stream."""
    name = body.get("model")
    if not name:
        raise APIError(400, "model is required")
    prompt = field(body, "prompt", str, "")
    images = check_images("images", body.get("images"))
    system = field(body, "system", str, None)
    template = field(body, "template", str, None)
    suffix = field(body, "suffix", str, "")
    raw = field(body, "raw", bool, False)
    stream = field(body, "stream", bool, True)
    context = field(body, "context", list, None)
    render_only = field(body, "_debug_render_only", bool, False)
    truncate = field(body, "truncate", bool, True)
    shift = field(body, "shift", bool, True)
    think = parse_think(body.get("think"))
    if context is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise APIError(400, 'invalid value for "context": expected an array of integers')
    if raw and (template or system or context):
        raise APIError(400, "raw mode does not support template, system, or context")
    logprobs, top_logprobs = logprob_fields(body)
    keep_alive = keep_alive_of(body)
    model = await state.resolve(name)
    think = resolve_think(model, name, think)
    if "completion" not in model.capabilities:
        raise APIError(400, f'"{name}" does not support generate')
    if images and "vision" not in model.capabilities:
        raise APIError(400, f'"{name}" does not support vision')
    options = request_options(model, body.get("options"), state.config)

    def reply(**fields: Any) -> dict[str, Any]:
        return {"model": name, "created_at": now_rfc3339(), **fields}

    if not prompt and not images and not render_only:
        if keep_alive == 0:
            await state.scheduler.unload(model.name)
            return json_response(reply(response="", done=True, done_reason="unload"))
        async with state.scheduler.use(model, options.spec, keep_alive):
            pass
        return json_response(reply(response="", done=True, done_reason="load"))

    async def build_prompt(runner, num_ctx: int) -> tuple[str, list[str]]:
        if raw:
            return image_tags(prompt, images), images
        context_text = None
        if context:
            context_text = await detokenize(runner, context)
        return await in_thread(generate_prompt, model, prompt, system=system, template=template, suffix=suffix,
                               context_text=context_text, tokenize=runner.tokenize_sync, num_ctx=num_ctx,
                               specials=runner.specials(), think=think, images=images, truncate=truncate)

    # Generate splits thinking from the response, raw or not, as Ollama's handler does (no tool
    # calls: generate parses those only with a built-in parser). A raw prompt is not harmony's:
    # Ollama's built-in parsers (harmony's) stay off for it.
    make_parser = None if raw and model.harmony else output_parser(model, [], think)
    job = Completion(model, options, keep_alive, build_prompt, logprobs, top_logprobs, render_only,
                     format=body.get("format"), make_parser=make_parser, truncate=truncate, shift=shift)

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for message in run_completion(state.scheduler, job):
            if "rendered" in message:
                # As Ollama: the rendered prompt and nothing else (done stays false).
                yield reply(response="", done=False,
                            _debug_info=debug_info(message["rendered"], message.get("image_count", 0)))
                return
            chunk = reply(response=message.get("content", ""))
            if message.get("thinking"):
                chunk["thinking"] = message["thinking"]
            chunk["done"] = bool(message.get("done"))
            if "logprobs" in message:
                chunk["logprobs"] = message["logprobs"]
            if message.get("done"):
                chunk["done_reason"] = message["done_reason"]
                if not raw:
                    chunk["context"] = message["context"]
                chunk.update(metrics(message))
            yield chunk

    def combine(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        final = dict(chunks[-1]) if chunks else reply(response="", done=True, done_reason="stop")
        if "_debug_info" in final:
            return final
        final["response"] = "".join(c.get("response", "") for c in chunks)
        thinking = "".join(c.get("thinking", "") for c in chunks)
        if thinking:
            final["thinking"] = thinking
        lps = [lp for c in chunks for lp in c.get("logprobs", [])]
        if lps:
            final["logprobs"] = lps
        return final

    return await ndjson_or_single(request, events(), stream, combine)


def debug_info(rendered: str, image_count: int = 0) -> dict[str, Any]:
    """Ollama's _debug_info (image_count is left out when 0, as Go's omitempty does)."""
    info: dict[str, Any] = {"rendered_template": rendered}
    if image_count:
        info["image_count"] = image_count
    return info


def check_messages(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise APIError(400, 'invalid value for "messages": expected an array')
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise APIError(400, f"messages[{i}] needs a role")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f'messages[{i}].content must be a string')
        checked = {**m, "role": role.lower(), "content": content}
        images = check_images(f"messages[{i}].images", m.get("images"))
        if images:
            checked["images"] = images
        else:
            checked.pop("images", None)
        if m.get("tool_calls") is not None:
            checked["tool_calls"] = check_tool_calls(i, m["tool_calls"])
        messages.append(checked)
    return messages


async def chat_response(state: State, request: Request, body: dict[str, Any]) -> Response:
    """/api/chat: checks, the load/unload special cases, then the stream."""
    name = body.get("model")
    if not name:
        raise APIError(400, "model is required")
    messages = check_messages(body.get("messages"))
    tools = check_tools(body.get("tools"))
    think = parse_think(body.get("think"))
    stream = field(body, "stream", bool, True)
    truncate = field(body, "truncate", bool, True)
    shift = field(body, "shift", bool, True)
    render_only = field(body, "_debug_render_only", bool, False)
    logprobs, top_logprobs = logprob_fields(body)
    keep_alive = keep_alive_of(body)
    model = await state.resolve(name)
    think = resolve_think(model, name, think)
    if "completion" not in model.capabilities:
        raise APIError(400, f'"{name}" does not support chat')
    require_tools(model, tools)
    require_vision(model, name, messages)
    options = request_options(model, body.get("options"), state.config)
    return await chat_stream(state, request, ChatRequest(
        name=name, model=model, messages=messages, tools=tools, think=think, format=body.get("format"),
        options=options, keep_alive=keep_alive, truncate=truncate, shift=shift, logprobs=logprobs,
        top_logprobs=top_logprobs, render_only=render_only), stream)


class ChatRequest:
    """A checked chat request (native, or translated from OpenAI's)."""

    def __init__(self, *, name: str, model: ModelRef, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 think: bool | str | None, format: Any, options: Any, keep_alive: float | None, truncate: bool = True,
                 shift: bool = True, logprobs: bool = False, top_logprobs: int = 0, render_only: bool = False,
                 force_tool_json: bool = False):
        self.name, self.model, self.messages, self.tools = name, model, messages, tools
        self.think, self.format, self.options, self.keep_alive = think, format, options, keep_alive
        self.truncate, self.shift, self.logprobs, self.top_logprobs = truncate, shift, logprobs, top_logprobs
        self.render_only, self.force_tool_json = render_only, force_tool_json

    def job(self) -> Completion:
        """The generation: the prompt rendered with tools and think, the output parsed."""
        model, messages, tools, think = self.model, self.messages, self.tools, self.think
        truncate = self.truncate

        async def build_prompt(runner, num_ctx: int) -> tuple[str, list[str]]:
            return await in_thread(chat_prompt, model, messages, num_ctx=num_ctx, truncate=truncate,
                                   tokenize=runner.tokenize_sync, specials=runner.specials(), tools=tools, think=think)

        return Completion(model, self.options, self.keep_alive, build_prompt, self.logprobs, self.top_logprobs,
                          self.render_only, format=self.format,
                          make_parser=output_parser(model, tools, think, force_tool_json=self.force_tool_json),
                          truncate=truncate, shift=self.shift)


async def chat_stream(state: State, request: Request, chat: ChatRequest, stream: bool) -> Response:
    """/api/chat's answer: NDJSON chunks of {message: {role, content, thinking?, tool_calls?}}, or one object."""
    name = chat.name

    def reply(message: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        return {"model": name, "created_at": now_rfc3339(), "message": message or {"role": "assistant", "content": ""},
                **fields}

    if not chat.messages and not chat.render_only:
        if chat.keep_alive == 0:
            await state.scheduler.unload(chat.model.name)
            return json_response(reply(done=True, done_reason="unload"))
        async with state.scheduler.use(chat.model, chat.options.spec, chat.keep_alive):
            pass
        return json_response(reply(done=True, done_reason="load"))

    job = chat.job()

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for message in run_completion(state.scheduler, job):
            if "rendered" in message:
                yield reply(done=False, _debug_info=debug_info(message["rendered"], message.get("image_count", 0)))
                return
            chunk = reply(message_fields(message), done=bool(message.get("done")))
            if "logprobs" in message:
                chunk["logprobs"] = message["logprobs"]
            if message.get("done"):
                chunk["done_reason"] = message["done_reason"]
                chunk.update(metrics(message))
            yield chunk

    def combine(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        final = dict(chunks[-1]) if chunks else reply(done=True, done_reason="stop")
        if "_debug_info" in final:
            return final
        final["message"] = message_fields({
            "content": "".join(c["message"]["content"] for c in chunks),
            "thinking": "".join(c["message"].get("thinking", "") for c in chunks),
            "tool_calls": [call for c in chunks for call in c["message"].get("tool_calls", [])],
        })
        lps = [lp for c in chunks for lp in c.get("logprobs", [])]
        if lps:
            final["logprobs"] = lps
        return final

    return await ndjson_or_single(request, events(), stream, combine)



# -- models ---------------------------------------------------------------------------------------
def list_models(store: Store) -> list[dict[str, Any]]:
    """/api/tags entries for every model in the store."""
    out = []
    for info in store.list():
        try:
            config = store.read_config(info.name, info.manifest)
        except (StoreError, OSError):
            config = {}
        family = config.get("model_family", "")
        out.append({
            "name": info.name.display, "model": info.name.display, "modified_at": rfc3339(info.modified_at),
            "size": info.size, "digest": info.digest,
            "details": {
                "parent_model": "", "format": config.get("model_format", "gguf"), "family": family,
                "families": config.get("model_families") or ([family] if family else None),
                "parameter_size": config.get("model_type", ""), "quantization_level": config.get("file_type", ""),
            },
        })
    return out


def show_model(model: ModelRef, verbose: bool) -> dict[str, Any]:
    """/api/show's answer."""
    from pollama.create.modelfile import format_modelfile
    from pollama.create.options import format_option_value

    params = []
    for key, value in model.params.items():
        for v in value if isinstance(value, list) else [value]:
            text = json.dumps(v) if isinstance(v, str) else format_option_value(v)
            params.append(f"{key:<30} {text}")
    info = full_metadata(model.model_path) if verbose else {
        k: (None if isinstance(v, list) and len(v) > 64 else v) for k, v in model.metadata.items()}
    answer: dict[str, Any] = {
        "license": "\n".join(model.license),
        "modelfile": format_modelfile(
            str(model.model_path), name=model.name, template=model.template, system=model.system,
            parameters=model.params, license=model.license, messages=model.messages, strict=False),
        "parameters": "\n".join(params),
        "template": model.template or "",
        "system": model.system or "",
        "details": model.details,
        "model_info": info,
        "capabilities": model.capabilities,
        "modified_at": rfc3339(model.modified_at),
    }
    for key in ("renderer", "parser"):
        if model.config.get(key):
            answer[key] = model.config[key]
    if model.messages:
        answer["messages"] = model.messages
    if verbose:
        from pollama.fs.gguf import GGUFFile

        with GGUFFile(model.model_path) as gguf:
            answer["tensors"] = [{"name": t.name, "type": t.type.name, "shape": list(t.ne)} for t in gguf.tensors.values()]
    return answer


# -- /api/pull and /api/push ----------------------------------------------------------------------
async def transfer_response(state: State, request: Request, body: dict[str, Any], verb: str) -> Response:
    """A pull or push through the registry client, its progress objects streamed as Ollama's."""
    from pollama.store import registry
    from pollama.store.names import ModelName

    name = model_name(body)
    if not isinstance(name, str) or not name:
        raise APIError(400, "model is required")
    try:
        ModelName.parse(name)
    except (InvalidName, ValueError):
        raise APIError(400, f'name "{name}" is invalid') from None
    insecure = field(body, "insecure", bool, False)
    stream = field(body, "stream", bool, True)
    transfer = registry.pull_model if verb == "pull" else registry.push_model

    async def events() -> AsyncIterator[dict[str, Any]]:
        updates = registry.transfer_events(transfer, state.store, name, insecure=insecure)
        try:
            async for update in updates:
                if "error" in update:
                    raise APIError(500, update["error"])
                yield update
        except registry.RegistryNotFound as e:
            raise APIError(404, str(e)) from None
        except ModelNotFound as e:
            raise APIError(404, str(e)) from None
        except (StoreError, OSError) as e:
            raise APIError(500, str(e)) from None
        finally:
            await updates.aclose()

    def combine(updates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"status": "success"} if not updates else updates[-1]

    return await ndjson_or_single(request, events(), stream, combine)


# -- /api/create --------------------------------------------------------------------------------
def _create_commands(state: State, body: dict[str, Any], staging: Path) -> tuple[str, list[list[str]], str | None]:
    """(model name, Modelfile commands, quantize) from the JSON form of /api/create."""
    from pollama.create.options import format_option_value

    name = model_name(body)
    if not isinstance(name, str) or not name:
        raise APIError(400, "model is required")
    commands: list[list[str]] = []
    source = field(body, "from", str, "")
    files = field(body, "files", dict, {})
    if source and files:
        raise APIError(400, "give either from or files, not both")
    if source:
        # A model name only: paths on the server's disk are not the client's to read.
        if source.startswith(("/", ".", "~")) or "\\" in source:
            raise APIError(400, f"from must name a model, not a path ({source!r}): upload files with /api/blobs and give them in files")
        commands.append(["model", source])
    elif files:
        commands.append(["model", _stage_files(state.store, files, staging)])
    else:
        raise APIError(400, "neither 'from' or 'files' was specified")
    adapters = field(body, "adapters", dict, {})
    if adapters:
        for path in _stage_files(state.store, adapters, staging / "adapters", single=False):
            commands.append(["adapter", path])
    for key in ("template", "system", "renderer", "parser"):
        value = field(body, key, str, None)
        if value is not None:
            commands.append([key, value])
    parameters = field(body, "parameters", dict, {})
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (dict, list)) or v is None:
                raise APIError(400, f'invalid value for parameter "{key}"')
            commands.append([key, format_option_value(v)])
    license_ = body.get("license")
    if license_ is not None and not isinstance(license_, (str, list)):
        raise APIError(400, 'invalid value for "license": expected a string or an array of strings')
    for text in [license_] if isinstance(license_, str) else (license_ or []):
        if not isinstance(text, str):
            raise APIError(400, 'invalid value for "license": expected a string or an array of strings')
        commands.append(["license", text])
    for i, m in enumerate(check_messages(body.get("messages"))):
        commands.append(["message", f"{m['role']}: {m['content']}"])
    quantize = field(body, "quantize", str, None) or field(body, "quantization", str, None)
    return name, commands, quantize


def _safe_file_name(name: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise APIError(400, f"invalid file name {name!r}")
    return name


def _stage_files(store: Store, files: dict[str, Any], staging: Path, single: bool = True):
    """Uploaded blobs laid out under their file names (links), as create expects a folder."""
    staging.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, digest in files.items():
        _safe_file_name(filename)
        if not isinstance(digest, str):
            raise APIError(400, f"invalid digest for {filename}")
        try:
            check_digest(digest)
        except (StoreError, ValueError) as e:
            raise APIError(400, str(e)) from None
        blob = store.blob_path(digest)
        if not blob.is_file():
            raise APIError(400, f"blob {digest} for {filename} was not uploaded (POST /api/blobs/{digest} first)")
        target = staging / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blob, target)
        paths.append(str(target))
    if not single:
        return paths
    ggufs = [p for p in paths if p.endswith(".gguf")]
    if len(paths) == 1:
        return paths[0]
    if len(ggufs) == 1 and not (staging / "config.json").exists():
        return ggufs[0]
    return str(staging)


async def create_response(state: State, request: Request, body: dict[str, Any]) -> Response:
    """/api/create: the job runs in a child process; its status lines are streamed."""
    stream = field(body, "stream", bool, True)
    staging = Path(tempfile.mkdtemp(prefix="pollama-create-"))
    try:
        name, commands, quantize = _create_commands(state, body, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    job = json.dumps({"model": name, "commands": commands, "base_dir": str(staging), "quantize": quantize})

    async def events() -> AsyncIterator[dict[str, Any]]:
        env = {**os.environ, "OLLAMA_MODELS": str(state.store.root)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pollama.server.create_job", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 20)
        try:
            proc.stdin.write(job.encode())
            await proc.stdin.drain()
            proc.stdin.close()
            while line := await proc.stdout.readline():
                message = json.loads(line)
                if "error" in message:
                    raise APIError(message.get("status_code", 500), message["error"])
                yield message
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            shutil.rmtree(staging, ignore_errors=True)

    def combine(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        return chunks[-1] if chunks else {"status": "success"}

    return await ndjson_or_single(request, events(), stream, combine)
