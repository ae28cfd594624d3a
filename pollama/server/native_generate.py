"""Ollama's /api/generate and /api/chat: the checks, the load/unload special cases, then the
stream. ChatRequest (a checked chat request) is shared with the OpenAI and Anthropic routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.chat import (
    check_images,
    check_messages,
    check_tools,
    message_fields,
    output_parser,
    parse_think,
    require_tools,
    require_vision,
    resolve_think,
)
from pollama.server.common import State, keep_alive_of, logprob_fields, metrics, ndjson_or_single
from pollama.server.errors import APIError
from pollama.server.generate import Completion, detokenize, in_thread, run_completion
from pollama.server.http import field, json_response, now_rfc3339, read_json
from pollama.server.models import ModelRef
from pollama.server.options import request_options
from pollama.server.prompt import chat_prompt, generate_prompt, image_tags


def add_generate_routes(app: FastAPI, state: State) -> None:
    """Mount /api/generate and /api/chat on app."""

    @app.post("/api/generate")
    async def api_generate(request: Request) -> Response:
        body = await read_json(request)
        return await generate_response(state, request, body)

    @app.post("/api/chat")
    async def api_chat(request: Request) -> Response:
        body = await read_json(request)
        return await chat_response(state, request, body)


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

