"""Anthropic's Messages API: POST /v1/messages, over the one chat pipeline.

A request becomes a ChatRequest (messages in Ollama's form, tools, think) and runs as
/api/chat runs; only the translation in and out is here. As Ollama: the x-api-key and
anthropic-version headers are accepted (a key is checked only when the server has keys, see
security.py), thinking asked of a model that cannot think is dropped rather than refused (so
clients that always ask, like Claude Code, work), and budget_tokens is not enforced. Every
error, also one the shared checks raise, takes Anthropic's shape
{"type": "error", "error": {"type", "message"}}; /v1/messages/count_tokens is a 404 in it, as
Ollama has no such route.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.chat import chat_model, check_tools, collect_blocks, reply_blocks, tool_call_schema, tool_function
from pollama.server.errors import APIError
from pollama.server.generate import run_completion
from pollama.server.http import ClientGone, EventStream, json_response, named_sse, primed, read_json, unless_disconnected
from pollama.server.native_generate import ChatRequest
from pollama.server.openai_request import apply_tool_choice, check_field_types
from pollama.server.options import request_options
from pollama.template.output import arguments_json

log = logging.getLogger(__name__)

FIELDS: dict[str, Any] = {
    "model": str, "max_tokens": int, "messages": list, "system": (str, list), "stream": bool,
    "temperature": float, "top_p": float, "top_k": int, "stop_sequences": list, "tools": list,
    "tool_choice": dict, "thinking": dict, "metadata": dict, "output_config": dict, "service_tier": str,
}

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")

# Anthropic's error type for each status (its API reference's list).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": f"req_{uuid.uuid4().hex}"}


def anthropic_error(status: int, message: str) -> Response:
    return json_response(error_body(status, message), status)


def in_anthropic_shape(route: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The route's errors as Anthropic's error objects (the app's handlers would give OpenAI's
    shape to every /v1/ path)."""
    @functools.wraps(route)
    async def wrapped(request: Request) -> Response:
        try:
            return await route(request)
        except APIError as e:
            return anthropic_error(e.status, e.message)
        except ClientGone:
            raise
        except Exception as e:
            log.exception("unexpected error on %s", request.url.path)
            return anthropic_error(500, f"internal error: {type(e).__name__}: {e}")

    return wrapped


# -- request -> the pipeline's messages, tools, think and options ---------------------------------
def _text(where: str, block: dict[str, Any]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise APIError(400, f"{where}.text must be a string")
    return text


def system_text(system: Any) -> str:
    """`system`: a string or text blocks (joined by newlines, as text parts are elsewhere)."""
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise APIError(400, f"system[{i}] must be a text block")
        texts.append(_text(f"system[{i}]", block))
    return "\n".join(texts)


def _image(where: str, block: dict[str, Any]) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise APIError(400, f"{where}.source must be an object")
    if source.get("type") != "base64":
        raise APIError(400, f"{where}: only base64 image sources are supported (pollama does not fetch URLs)")
    if source.get("media_type") not in IMAGE_TYPES:
        raise APIError(400, f"{where}.source.media_type must be one of {', '.join(IMAGE_TYPES)}")
    data = source.get("data")
    try:
        if not isinstance(data, str) or not data:
            raise ValueError
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}.source.data must be base64 image data") from None
    return data


def _tool_result(where: str, block: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise APIError(400, f"{where}.tool_use_id is required")
    content = block.get("content")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text(f"{where}.content[{j}]", part))
            elif kind == "image":
                images.append(_image(f"{where}.content[{j}]", part))
            else:
                raise APIError(400, f"{where}.content[{j}]: unsupported block type {kind!r} in a tool result")
    elif content is not None:
        raise APIError(400, f"{where}.content must be a string or an array of blocks")
    message: dict[str, Any] = {"role": "tool", "content": "\n".join(texts), "tool_call_id": tool_use_id}
    if tool_use_id in names:
        message["tool_name"] = names[tool_use_id]
    if images:
        message["images"] = images
    return message


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """system and messages as Ollama's messages. A user turn's tool_result blocks become tool
    messages before its text (the results answer the calls just made); an assistant's
    tool_use blocks become its tool_calls, its thinking blocks its thinking."""
    messages: list[dict[str, Any]] = []
    system = system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id -> tool name
    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise APIError(400, f'{where}: a message needs role "user" or "assistant"')
        role, content = m["role"], m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise APIError(400, f"{where}.content must be a string or an array of content blocks")
        texts, images, calls, thinking, results = [], [], [], [], []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text(at, block))
            elif kind == "image" and role == "user":
                images.append(_image(at, block))
            elif kind == "tool_result" and role == "user":
                results.append(_tool_result(at, block, names))
            elif kind == "tool_use" and role == "assistant":
                call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
                if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                    raise APIError(400, f"{at}: a tool_use block needs an id and a name")
                if arguments is None:
                    arguments = {}
                if not isinstance(arguments, dict):
                    raise APIError(400, f"{at}.input must be an object")
                names[call_id] = name
                calls.append({"id": call_id, "function": {"name": name, "arguments": arguments}})
            elif kind == "thinking" and role == "assistant":
                if not isinstance(block.get("thinking"), str):
                    raise APIError(400, f"{at}.thinking must be a string")
                thinking.append(block["thinking"])
            elif kind == "redacted_thinking" and role == "assistant":
                continue  # encrypted by another server: nothing a local model can read
            else:
                raise APIError(400, f"{at}: unsupported content block type {kind!r} in a {role} message")
        messages.extend(results)
        if texts or images or calls or thinking or not results:
            message: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
            if images:
                message["images"] = images
            if calls:
                message["tool_calls"] = calls
            if thinking:
                message["thinking"] = "\n".join(thinking)
            messages.append(message)
    return messages


def chat_tools(value: Any) -> list[dict[str, Any]]:
    """Anthropic's client tools ({"name", "description", "input_schema"}) as Ollama's."""
    tools = []
    for i, tool in enumerate(value or []):
        if not isinstance(tool, dict):
            raise APIError(400, f"tools[{i}] must be an object")
        if tool.get("type") not in (None, "custom"):
            raise APIError(400, f"tools[{i}]: tool type {tool['type']!r} is not supported (only client tools "
                                "with an input_schema)")
        tools.append({"type": "function", "function": tool_function(tool.get("name"), tool.get("description"),
                                                                  tool.get("input_schema"))})
    return check_tools(tools)


def chat_tool_choice(choice: Any) -> Any:
    """Anthropic's tool_choice in OpenAI's words (apply_tool_choice's): any = required."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind in ("auto", "any", "none"):
        return {"any": "required"}.get(kind, kind)
    raise APIError(400, 'invalid tool_choice: use {"type": "auto"}, {"type": "any"}, {"type": "none"} or '
                        '{"type": "tool", "name": ...}')


EFFORTS = ("low", "medium", "high", "max")


def requested_think(body: dict[str, Any]) -> bool | str | None:
    """thinking {"type": "enabled"|"adaptive"|"disabled"} as think, else output_config.effort as a level."""
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type")
        if kind not in ("enabled", "adaptive", "disabled"):
            raise APIError(400, 'invalid thinking: type must be "enabled", "adaptive" or "disabled"')
        budget = thinking.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise APIError(400, "thinking.budget_tokens must be a non-negative integer")
        return kind != "disabled"
    effort = (body.get("output_config") or {}).get("effort")
    if effort is None:
        return None
    effort = {"xhigh": "high"}.get(effort, effort)
    if effort not in EFFORTS:
        raise APIError(400, f'invalid output_config.effort: "{effort}" (must be "low", "medium", "high" or "max")')
    return effort


def sampling_options(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's options: max_tokens is num_predict; the rest only when given (else the model's)."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None or max_tokens <= 0:
        raise APIError(400, "max_tokens is required and must be positive")
    options: dict[str, Any] = {"num_predict": max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            options[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        if not all(isinstance(s, str) and s for s in stops):
            raise APIError(400, "stop_sequences must be non-empty strings")
        options["stop"] = stops
    return options


def estimated_input_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """About four characters a token: message_start's count, before the prompt is evaluated
    (message_delta then gives the true one), as Ollama estimates it."""
    chars = sum(len(m.get("content", "")) + len(m.get("thinking", "")) + len(json.dumps(m.get("tool_calls", [])))
                for m in messages)
    return max(1, (chars + len(json.dumps(tools))) // 4)


# -- the pipeline's reply -> Anthropic's ----------------------------------------------------------
def stop_reason(done: dict[str, Any], called: bool) -> str:
    """As Ollama maps done_reason (a stop sequence's end is "stop" there too: end_turn)."""
    if called:
        return "tool_use"
    return "max_tokens" if done.get("done_reason") == "length" else "end_turn"


def usage(done: dict[str, Any]) -> dict[str, Any]:
    return {"input_tokens": done.get("prompt_eval_count", 0), "output_tokens": done.get("eval_count", 0)}


def content_block(kind: str, value: Any) -> dict[str, Any]:
    """A whole block; value None gives the empty block a stream starts with."""
    if kind == "thinking":
        return {"type": "thinking", "thinking": value or "", "signature": ""}
    if kind == "text":
        return {"type": "text", "text": value or ""}
    function = value.get("function") or {}
    return {"type": "tool_use", "id": value.get("id") or f"toolu_{uuid.uuid4().hex}", "name": function.get("name", ""),
            "input": function.get("arguments") or {}}


class Message:
    """The message object of one request."""

    def __init__(self, model: str):
        self.id = f"msg_{uuid.uuid4().hex}"
        self.model = model

    def object(self, content: list[dict[str, Any]], reason: str | None, used: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": reason, "stop_sequence": None, "usage": used}


async def stream_events(message: Message, estimate: int, lines: AsyncIterator[dict[str, Any]]) \
        -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Anthropic's event sequence: message_start, then per block content_block_start, its
    deltas (text_delta, thinking_delta, input_json_delta) and content_block_stop, then
    message_delta (stop_reason and the usage) and message_stop."""
    index = -1
    called = False
    yield "message_start", {"type": "message_start", "message": message.object(
        [], None, {"input_tokens": estimate, "output_tokens": 0})}
    blocks = reply_blocks(lines)
    try:
        async for step, kind, value in blocks:
            if step == "start" or step == "call":
                index += 1
                yield "content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": content_block(kind, None if step == "start" else value)}
            if step == "delta":
                delta = {"type": "thinking_delta", "thinking": value} if kind == "thinking" else \
                    {"type": "text_delta", "text": value}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            elif step == "call":
                called = True
                # The input arrives whole: the block starts with {} and one delta carries all of it.
                arguments = arguments_json((value.get("function") or {}).get("arguments") or {})
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta", "partial_json": arguments}}
            if step == "stop" or step == "call":
                yield "content_block_stop", {"type": "content_block_stop", "index": index}
            elif step == "done":
                yield "message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": stop_reason(value, called), "stop_sequence": None},
                                        "usage": usage(value)}
                yield "message_stop", {"type": "message_stop"}
    finally:
        await blocks.aclose()
        await lines.aclose()


def add_anthropic_routes(app: FastAPI, state) -> None:
    """Mount POST /v1/messages (and count_tokens's 404), sharing state with the other routes."""

    @app.post("/v1/messages")
    @in_anthropic_shape
    async def messages_route(request: Request) -> Response:
        body = await read_json(request)
        check_field_types(body, FIELDS)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        options = sampling_options(body)
        if not body.get("messages"):
            raise APIError(400, "messages is required")
        messages = chat_messages(body)
        tools, call_required = apply_tool_choice(chat_tools(body.get("tools")), chat_tool_choice(body.get("tool_choice")))
        think = requested_think(body)
        model, think = await chat_model(state.resolve, name, messages, tools, think, relax_think=True)
        chat = ChatRequest(name=name, model=model, messages=messages, tools=tools, think=think,
                           format=tool_call_schema(tools) if call_required else None,
                           options=request_options(model, options, state.config), keep_alive=None,
                           force_tool_json=call_required)
        message = Message(name)
        # The first line is awaited before answering, so that a failed load is still an error status.
        _first, lines = await primed(request, run_completion(state.scheduler, chat.job()))
        if not body.get("stream"):
            blocks, done = await unless_disconnected(request, collect_blocks(lines))
            content = [content_block(kind, value) for kind, value in blocks]
            called = any(kind == "tool_call" for kind, _ in blocks)
            return json_response(message.object(content, stop_reason(done, called), usage(done)))

        def failed(text: str) -> tuple[str, dict[str, Any]]:
            return "error", {k: v for k, v in error_body(500, text).items() if k != "request_id"}

        events = stream_events(message, estimated_input_tokens(messages, tools), lines)
        return EventStream(named_sse(events, failed), "text/event-stream")

    @app.post("/v1/messages/count_tokens")
    @in_anthropic_shape
    async def count_tokens(request: Request) -> Response:
        raise APIError(404, "/v1/messages/count_tokens is not supported (Ollama has no such endpoint)")
