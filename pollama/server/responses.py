"""OpenAI's Responses API: POST /v1/responses, over the one chat pipeline.

A request becomes a ChatRequest (messages in Ollama's form, tools, think, format) and runs as
/api/chat and /v1/chat/completions run; only the translation in and out is here. As Ollama,
the API is the stateless flavour: nothing is stored, so previous_response_id, conversation
and item references are refused with a 400 saying to send the whole conversation in input.
Errors take OpenAI's shape (the app's handler, for every /v1/ path).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.chat import chat_model, check_tools, collect_blocks, reply_blocks, tool_call_schema, tool_function
from pollama.server.errors import APIError
from pollama.server.generate import run_completion
from pollama.server.http import EventStream, json_response, loads_checked, named_sse, primed, read_json, unless_disconnected
from pollama.server.native_generate import ChatRequest
from pollama.server.openai_request import (
    apply_tool_choice,
    check_field_types,
    image_from_url,
    openai_options,
    think_from_reasoning_effort,
)
from pollama.server.options import request_options
from pollama.template.output import arguments_json

# The JSON type of each request field (null is the same as absent); a tuple: any of them.
FIELDS: dict[str, Any] = {
    "model": str, "input": (str, list), "instructions": str, "tools": list, "tool_choice": (str, dict),
    "text": dict, "reasoning": dict, "max_output_tokens": int, "temperature": float, "top_p": float,
    "stream": bool, "stream_options": dict, "previous_response_id": str, "conversation": (str, dict),
    "store": bool, "include": list, "metadata": dict, "parallel_tool_calls": bool, "truncation": str,
    "background": bool, "user": str, "service_tier": str, "top_logprobs": int, "max_tool_calls": int,
    "prompt_cache_key": str, "safety_identifier": str, "prompt": dict,
}

STATELESS = "pollama does not store responses (as Ollama): send the whole conversation in input"


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- request -> the pipeline's messages, tools and format -----------------------------------------
def _refuse_stateful(body: dict[str, Any]) -> None:
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise APIError(400, f"{name} is not supported: {STATELESS}")
    if body.get("background"):
        raise APIError(400, "background responses are not supported: pollama answers while the request is open")
    if body.get("prompt") is not None:
        raise APIError(400, "prompt (a stored prompt template) is not supported: give instructions and input")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise APIError(400, 'invalid value for "truncation": expected "auto" or "disabled"')


def _content(where: str, content: Any) -> tuple[str, list[str]]:
    """A message's text and images (base64) from a string or a list of content parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or an array of content parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise APIError(400, f"{where}.content[{j}].{'refusal' if kind == 'refusal' else 'text'} must be a string")
            texts.append(text)
        elif kind == "input_image":
            if part.get("image_url") is None and part.get("file_id") is not None:
                raise APIError(400, f"{where}.content[{j}]: file_id images are not supported (pollama stores no "
                                    "files): give image_url as a data: URL")
            images.append(image_from_url(part.get("image_url")))
        elif kind == "input_file":
            raise APIError(400, f"{where}.content[{j}]: file inputs are not supported")
        else:
            raise APIError(400, f"{where}.content[{j}]: unsupported content part type {kind!r} (expected "
                                "input_text, output_text or input_image)")
    return "\n".join(texts), images


def _arguments(where: str, value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    parsed = loads_checked(value, f"{where}.arguments") if isinstance(value, str) else None
    if not isinstance(parsed, dict):
        raise APIError(400, f"{where}.arguments must be a JSON object in a string")
    return parsed


def _text_of_output(where: str, output: Any) -> tuple[str, list[str]]:
    if isinstance(output, (str, list)):
        return _content(where, output)
    raise APIError(400, f"{where}.output must be a string or an array of content parts")


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """instructions and input as Ollama's messages (role, content, images, thinking, tool_calls,
    tool_call_id, tool_name)."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}] if items else messages
    names: dict[str, str] = {}  # call_id -> function name, for the tool results
    thinking = ""  # a reasoning item's text waits for the assistant message it goes with
    for i, item in enumerate(items or []):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise APIError(400, f"{where} must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        last = messages[-1] if messages else None
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f'{where}.role must be "user", "assistant", "system" or "developer"')
            text, images = _content(where, item.get("content"))
            message: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
            if images:
                message["images"] = images
            if role == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not name or not isinstance(call_id, str) or not call_id:
                raise APIError(400, f"{where}: a function_call needs a name and a call_id")
            call = {"id": call_id, "function": {"name": name, "arguments": _arguments(where, item.get("arguments"))}}
            names[call_id] = name
            # Calls of one turn (and the text before them) are one assistant message, as a chat has them.
            if last is not None and last["role"] == "assistant" and not thinking:
                last.setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": "", "tool_calls": [call]}
                if thinking:
                    message["thinking"], thinking = thinking, ""
                messages.append(message)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise APIError(400, f"{where}: a function_call_output needs the call_id of its function_call")
            text, images = _text_of_output(where, item.get("output"))
            message = {"role": "tool", "content": text, "tool_call_id": call_id}
            if images:
                message["images"] = images
            if call_id in names:
                message["tool_name"] = names[call_id]
            messages.append(message)
        elif kind == "reasoning":
            # Our own reasoning items carry their text in encrypted_content (it is not encrypted).
            summary = item.get("summary") or []
            text = item.get("encrypted_content")
            if not isinstance(text, str):
                text = "".join(s.get("text", "") for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str))
            thinking += text
        elif kind == "item_reference":
            raise APIError(400, f"{where}: item references are not supported: {STATELESS}")
        else:
            raise APIError(400, f"{where}: unsupported input item type {kind!r} (expected message, function_call, "
                                "function_call_output or reasoning)")
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def chat_tools(value: Any) -> list[dict[str, Any]]:
    """Responses function tools ({"type": "function", "name", "parameters", ...}) as Ollama's."""
    if value is None:
        return []
    tools = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise APIError(400, f"tools[{i}]: tool type {kind!r} is not supported (only function tools)")
        tools.append({"type": "function", "function": tool_function(tool.get("name"), tool.get("description"),
                                                              tool.get("parameters"))})
    return check_tools(tools)


def chat_tool_choice(choice: Any) -> Any:
    """Responses' tool_choice in Chat Completions' form ({"type": "function", "name"} is flat here)."""
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def text_format(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(text.format as the response echoes it, Ollama's format)."""
    text = body.get("text") or {}
    spec = text.get("format")
    if spec is None:
        return {"type": "text"}, None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return spec, None
    if kind == "json_object":
        return spec, "json"
    if kind == "json_schema":
        if not isinstance(spec.get("schema"), dict):
            raise APIError(400, 'invalid value for "text.format": a json_schema format needs a schema object')
        return spec, spec["schema"]
    raise APIError(400, 'invalid value for "text.format": expected a type of "text", "json_object" or "json_schema"')


# -- the response object and its items ------------------------------------------------------------
def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None) -> dict[str, Any]:
    """An assistant message: in progress and empty when text is None."""
    return {"id": item_id, "type": "message", "status": "in_progress" if text is None else "completed",
            "role": "assistant", "content": [] if text is None else [output_text_part(text)]}


def reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    # The thinking goes back in encrypted_content too (plain text), so that a client replaying
    # the item gives the model its reasoning again, as Ollama does.
    if text is None:
        return {"id": item_id, "type": "reasoning", "summary": []}
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}],
            "encrypted_content": text}


def function_call_item(item_id: str, call: dict[str, Any], done: bool) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": item_id, "type": "function_call", "status": "completed" if done else "in_progress",
            "call_id": call.get("id") or _new_id("call"), "name": function.get("name", ""),
            "arguments": arguments_json(function.get("arguments") or {}) if done else ""}


def usage(done: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = done.get("prompt_eval_count", 0), done.get("eval_count", 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


class Reply:
    """The response object of one request, as it is built up (the echo of the request's settings)."""

    def __init__(self, body: dict[str, Any], fmt_echo: dict[str, Any]):
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        reasoning = body.get("reasoning")
        self.echo = {
            "model": body["model"], "previous_response_id": None, "instructions": body.get("instructions"),
            "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice") or "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "text": {"format": fmt_echo}, "temperature": _given(body.get("temperature"), 1.0),
            "top_p": _given(body.get("top_p"), 1.0), "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_logprobs": 0,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
            if isinstance(reasoning, dict) else None,
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None, "store": False,
            "background": False, "service_tier": "default", "metadata": body.get("metadata") or {},
            "user": body.get("user"), "safety_identifier": None, "prompt_cache_key": None,
        }

    def object(self, status: str, output: list[dict[str, Any]], done: dict[str, Any] | None = None,
               error: str | None = None) -> dict[str, Any]:
        finished = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None, "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "error": {"code": "server_error", "message": error} if error is not None else None,
            "output": output, "usage": usage(done) if finished and done is not None else None, **self.echo,
        }


def status_of(done: dict[str, Any]) -> str:
    """A reply cut by max_output_tokens is "incomplete", as OpenAI reports it."""
    return "incomplete" if done.get("done_reason") == "length" else "completed"


def output_items(blocks: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The output items of a whole reply's blocks, in order."""
    makers = {"thinking": lambda v: reasoning_item(_new_id("rs"), v), "text": lambda v: message_item(_new_id("msg"), v),
              "tool_call": lambda v: function_call_item(_new_id("fc"), v, True)}
    return [makers[kind](value) for kind, value in blocks]


async def stream_events(reply: Reply, messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The Responses event sequence for the pipeline's lines: response.created, in_progress, then
    per output item .output_item.added, its parts and deltas, .output_item.done, and
    response.completed (or .incomplete) with the whole response and its usage."""
    sequence = 0
    output: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        nonlocal sequence
        sequence += 1
        return kind, {"type": kind, "sequence_number": sequence - 1, **data}

    def at(item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": len(output)}

    yield event("response.created", response=reply.object("in_progress", []))
    yield event("response.in_progress", response=reply.object("in_progress", []))
    blocks = reply_blocks(messages)
    try:
        async for step, kind, value in blocks:
            if step == "start":
                current = reasoning_item(_new_id("rs"), None) if kind == "thinking" else message_item(_new_id("msg"), None)
                yield event("response.output_item.added", output_index=len(output), item=current)
                if kind == "thinking":
                    yield event("response.reasoning_summary_part.added", **at(current), summary_index=0,
                                part={"type": "summary_text", "text": ""})
                else:
                    yield event("response.content_part.added", **at(current), content_index=0, part=output_text_part(""))
            elif step == "delta" and kind == "thinking":
                yield event("response.reasoning_summary_text.delta", **at(current), summary_index=0, delta=value)
            elif step == "delta":
                yield event("response.output_text.delta", **at(current), content_index=0, delta=value, logprobs=[])
            elif step == "stop" and kind == "thinking":
                yield event("response.reasoning_summary_text.done", **at(current), summary_index=0, text=value)
                yield event("response.reasoning_summary_part.done", **at(current), summary_index=0,
                            part={"type": "summary_text", "text": value})
                item = reasoning_item(current["id"], value)
                yield event("response.output_item.done", output_index=len(output), item=item)
                output.append(item)
            elif step == "stop":
                yield event("response.output_text.done", **at(current), content_index=0, text=value, logprobs=[])
                yield event("response.content_part.done", **at(current), content_index=0, part=output_text_part(value))
                item = message_item(current["id"], value)
                yield event("response.output_item.done", output_index=len(output), item=item)
                output.append(item)
            elif step == "call":
                item_id = _new_id("fc")
                item = function_call_item(item_id, value, True)
                yield event("response.output_item.added", output_index=len(output),
                            item={**function_call_item(item_id, value, False), "call_id": item["call_id"]})
                yield event("response.function_call_arguments.delta", **at(item), delta=item["arguments"])
                yield event("response.function_call_arguments.done", **at(item), name=item["name"],
                            arguments=item["arguments"])
                yield event("response.output_item.done", output_index=len(output), item=item)
                output.append(item)
            elif step == "done":
                status = status_of(value)
                yield event(f"response.{status}", response=reply.object(status, output, value))

    finally:
        await blocks.aclose()
        await messages.aclose()

def add_responses_routes(app: FastAPI, state) -> None:
    """Mount POST /v1/responses, sharing state (store, scheduler) with the other routes."""

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        body = await read_json(request)
        check_field_types(body, FIELDS)
        _refuse_stateful(body)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        messages = input_messages(body)
        if not any(m["role"] != "system" for m in messages):
            raise APIError(400, "input is required")
        tools, call_required = apply_tool_choice(chat_tools(body.get("tools")), chat_tool_choice(body.get("tool_choice")))
        fmt_echo, fmt = text_format(body)
        if call_required:
            fmt = tool_call_schema(tools)  # the answer must be one call: constrain it to one
        think = think_from_reasoning_effort(body)
        model, think = await chat_model(state.resolve, name, messages, tools, think)
        # OpenAI's defaults (temperature and top_p 1), as on /v1/chat/completions.
        sampling = {"temperature": body.get("temperature"), "top_p": body.get("top_p"),
                    "max_tokens": body.get("max_output_tokens")}
        options = request_options(model, openai_options(sampling), state.config)
        chat = ChatRequest(name=name, model=model, messages=messages, tools=tools, think=think, format=fmt,
                           options=options, keep_alive=None, force_tool_json=call_required)
        reply = Reply(body, fmt_echo)
        # The first line is awaited before answering, so that a failed load or a bad schema
        # is still an error status rather than an event in a stream already begun.
        _first, lines = await primed(request, run_completion(state.scheduler, chat.job()))
        if not body.get("stream"):
            blocks, done = await unless_disconnected(request, collect_blocks(lines))
            return json_response(reply.object(status_of(done), output_items(blocks), done))

        def failed(message: str) -> tuple[str, dict[str, Any]]:
            return "response.failed", {"type": "response.failed", "response": reply.object("failed", [], error=message)}

        return EventStream(named_sse(stream_events(reply, lines), failed), "text/event-stream")
