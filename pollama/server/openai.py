"""OpenAI's API over the native one: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. Requests are translated to native requests and answers back, as Ollama's
middleware does; errors take OpenAI's shape {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import base64
import binascii
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pollama.server.chat import (
    chat_model,
    check_tools,
    tool_call_schema,
)
from pollama.server.common import keep_alive_of
from pollama.server.errors import APIError
from pollama.server.generate import Completion, embed, in_thread, run_completion
from pollama.server.http import (
    EventStream,
    field,
    json_bytes,
    json_response,
    json_type,
    loads_checked,
    primed,
    read_json,
    unless_disconnected,
)
from pollama.server.native_generate import ChatRequest, debug_info
from pollama.server.native_models import list_models
from pollama.server.options import request_options
from pollama.template.output import openai_finish_reason, to_openai_tool_calls

FINGERPRINT = "fp_ollama"


def openai_error(status: int, message: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "api_error"
    if status == 404:
        kind = "not_found_error" if "model" in message else kind
    return json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"invalid value for {name}: expected a number")
    return value


def openai_options(body: dict[str, Any], *, completions: bool = False) -> dict[str, Any]:
    """Native options from OpenAI's sampling fields, as Ollama maps them: temperature and
    top_p default to OpenAI's 1.0 (not the model's), and the legacy completions endpoint
    always sets both penalties (0 when absent)."""
    options: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
    if completions:
        options.update(frequency_penalty=0.0, presence_penalty=0.0)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise APIError(400, "max_tokens must be a non-negative integer")
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise APIError(400, "stop must be a string or an array of strings")
        options["stop"] = stop
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        value = _number(body, name)
        if value is not None:
            options[name] = int(value) if name == "seed" else value
    return options


# The JSON type of each field OpenAI's API (and Ollama's OpenAI layer, whose Go structs refuse
# a value of another type) takes on each endpoint; null is the same as absent. A tuple: any of them.
_COMMON_FIELDS: dict[str, Any] = {
    "model": str, "user": str, "logit_bias": dict,
}
# `n` is type-checked, then ignored: the answer has one choice whatever n asks, as Ollama's
# OpenAI layer has it (its request types have no n at all).
_GENERATION_FIELDS: dict[str, Any] = {
    **_COMMON_FIELDS,
    "stream": bool, "stream_options": dict, "max_tokens": int, "max_completion_tokens": int,
    "temperature": float, "top_p": float, "frequency_penalty": float, "presence_penalty": float,
    "seed": int, "n": int, "stop": (str, list), "_debug_render_only": bool,
}
_FIELDS: dict[str, dict[str, Any]] = {
    "chat": {
        **_GENERATION_FIELDS,
        "messages": list, "response_format": dict, "tools": list, "tool_choice": (str, dict),
        "parallel_tool_calls": bool, "logprobs": bool, "top_logprobs": int, "reasoning_effort": str,
        "reasoning": dict,
    },
    "completions": {
        **_GENERATION_FIELDS,
        "prompt": (str, list), "suffix": str, "logprobs": int, "echo": bool, "best_of": int,
    },
    "embeddings": {
        **_COMMON_FIELDS,
        "input": (str, list), "encoding_format": str, "dimensions": int,
    },
}
_KIND_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
               dict: "an object"}


def check_field_types(body: dict[str, Any], endpoint: str | dict[str, Any]) -> None:
    """400 (OpenAI's shape, from the app's handler) naming the first field of a wrong JSON type;
    endpoint names one of _FIELDS, or is a table of its own (field -> type, or a tuple of them)."""
    fields = _FIELDS[endpoint] if isinstance(endpoint, str) else endpoint
    for name, kinds in fields.items():
        value = body.get(name)
        if value is None:
            continue
        for kind in kinds if isinstance(kinds, tuple) else (kinds,):
            try:
                field(body, name, kind)
            except APIError:
                continue
            break
        else:
            wanted = " or ".join(_KIND_NAMES[k] for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
            raise APIError(400, f'invalid value for "{name}": expected {wanted}, got {json_type(value)}')
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is not None \
            and not isinstance(options["include_usage"], bool):
        raise APIError(400, 'invalid value for "stream_options.include_usage": expected a boolean, '
                            f'got {json_type(options["include_usage"])}')
    for name in ("max_tokens", "max_completion_tokens", "n", "best_of", "dimensions", "top_logprobs",
                 "max_output_tokens", "max_tool_calls"):
        value = body.get(name)
        if name in fields and value is not None and value < 0:
            raise APIError(400, f'invalid value for "{name}": must not be negative')


def _logprob_fields(body: dict[str, Any]) -> tuple[bool, int]:
    logprobs = body.get("logprobs")
    top = body.get("top_logprobs") or 0
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):  # /v1/completions: an int
        top, logprobs = logprobs, logprobs > 0
    if not isinstance(top, int) or not 0 <= top <= 20:
        raise APIError(400, "top_logprobs must be between 0 and 20")
    return bool(logprobs) or top > 0, top


# OpenAI's efforts past Ollama's ends are clamped to its nearest level, as Ollama does.
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
    "xhigh": "max", "ultra": "max",
}


def think_from_reasoning_effort(body: dict[str, Any]) -> bool | str | None:
    """`reasoning.effort` (or `reasoning_effort`) as Ollama's think; absent leaves the model's default."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    if effort in (None, ""):
        return None
    if not isinstance(effort, str) or effort not in _EFFORT_TO_THINK:
        raise APIError(400, f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                            '"xhigh", "ultra", "max", or "none")')
    return _EFFORT_TO_THINK[effort]


def apply_tool_choice(tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]], bool]:
    """(the tools offered to the model, whether the answer must be a call) for OpenAI's tool_choice.

    "auto" (the default): the tools, the model decides. "none": no tools offered (the model
    cannot call one). "required": the tools, and the answer is constrained to one call of
    one of them. {"type": "function", "function": {"name": N}}: only N, and a call of it.
    Ollama itself ignores tool_choice; this is pollama's addition.
    """
    if choice is None or choice == "auto":
        return tools, False
    if choice == "none":
        return [], False
    if choice == "required":
        if not tools:
            raise APIError(400, 'tool_choice "required" needs tools')
        return tools, True
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        named = [t for t in tools if t["function"]["name"] == wanted]
        if not named:
            raise APIError(400, f'tool_choice names the function "{wanted}", which is not in tools')
        return named[:1], True
    raise APIError(400, 'invalid tool_choice: use "auto", "none", "required" or '
                        '{"type": "function", "function": {"name": ...}}')


def _tool_calls_from_openai(i: int, calls: Any) -> list[dict[str, Any]]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise APIError(400, f"messages[{i}].tool_calls must be an array")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise APIError(400, "invalid tool call arguments")
        arguments = function.get("arguments")
        try:
            parsed = loads_checked(arguments, "tool call arguments") if isinstance(arguments, str) else arguments
        except APIError as e:
            if "nested" in e.message or "surrogate" in e.message:
                raise
            parsed = None
        if not isinstance(parsed, dict):
            raise APIError(400, "invalid tool call arguments")
        entry: dict[str, Any] = {"function": {"name": str(function.get("name") or ""), "arguments": parsed}}
        if call.get("id"):
            entry["id"] = str(call["id"])
        out.append(entry)
    return out


def openai_messages(raw_messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages in Ollama's form: tool calls with object arguments, a tool result's
    function name found from its tool_call_id, reasoning as thinking, developer as system."""
    messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a role")
        role = "system" if m["role"] == "developer" else m["role"].lower()
        content, images = _message_content(i, m.get("content"))
        message: dict[str, Any] = {"role": role, "content": content}
        if images:
            message["images"] = images
        calls = _tool_calls_from_openai(i, m.get("tool_calls"))
        if calls:
            message["tool_calls"] = calls
        if isinstance(m.get("reasoning"), str) and m["reasoning"]:
            message["thinking"] = m["reasoning"]
        if role == "tool":
            tool_call_id = m.get("tool_call_id")
            if tool_call_id:
                message["tool_call_id"] = str(tool_call_id)
            tool_name = m.get("name") or _name_of_call(raw_messages, tool_call_id)
            if tool_name:
                message["tool_name"] = str(tool_name)
        messages.append(message)
    return messages


def _name_of_call(raw_messages: list[Any], tool_call_id: Any) -> str:
    # The last call with that id wins, as in Ollama.
    if not tool_call_id:
        return ""
    for m in reversed(raw_messages):
        for call in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
            if isinstance(call, dict) and call.get("id") == tool_call_id:
                return str((call.get("function") or {}).get("name") or "")
    return ""


def _message_content(i: int, content: Any) -> tuple[str, list[str]]:
    """A message's text, and its image_url parts' images as base64 (Ollama's `images`)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if not isinstance(part, dict):
                raise APIError(400, f"messages[{i}].content: invalid part")
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = part.get("image_url")
                images.append(image_from_url(url.get("url") if isinstance(url, dict) else url))
            else:
                raise APIError(400, f"messages[{i}].content: unsupported part type {part.get('type')!r}")
        return "\n".join(texts), images
    raise APIError(400, f"messages[{i}].content must be a string or an array of parts")


IMAGE_URL_TYPES = ("jpeg", "jpg", "png", "webp", "gif", "bmp")


def image_from_url(url: Any) -> str:
    """The base64 image of a `data:image/<type>;base64,...` URL. Other URLs are refused:
    fetching what a request names would let any client make the server reach any address."""
    if not isinstance(url, str) or not url:
        raise APIError(400, "invalid image input: image_url needs a url")
    if not url.startswith("data:"):
        raise APIError(400, "invalid image input: only data: URLs are accepted (pollama does not fetch image URLs)")
    header, comma, payload = url.partition(",")
    media = header[len("data:"):].split(";")
    if not comma or "base64" not in media[1:] or not media[0].startswith("image/") \
            or media[0][len("image/"):] not in IMAGE_URL_TYPES:
        raise APIError(400, "invalid image input: expected data:image/<jpeg|png|webp|gif|bmp>;base64,...")
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "invalid image input: the data URL is not valid base64") from None
    return payload


def _stream_options(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return bool(isinstance(opts, dict) and opts.get("include_usage"))


def _finish_reason(done_reason: str | None) -> str:
    return "length" if done_reason == "length" else "stop"


def _usage(done: dict[str, Any]) -> dict[str, int]:
    prompt, completion = done.get("prompt_eval_count", 0), done.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"token": e.get("token", ""), "logprob": e.get("logprob", 0.0), "bytes": e.get("bytes"),
             "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
                              for t in e.get("top_logprobs") or []]} for e in entries]


def sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def lines() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield b"data: " + json_bytes(event) + b"\n\n"
        except Exception as e:  # noqa: BLE001 - the stream still ends with an error object
            message = e.message if isinstance(e, APIError) else f"internal error: {type(e).__name__}: {e}"
            yield b"data: " + json_bytes({"error": {"message": message, "type": "api_error", "param": None, "code": None}}) + b"\n\n"
            return
        finally:
            await events.aclose()
        yield b"data: [DONE]\n\n"

    return lines()


def add_openai_routes(app: FastAPI, state) -> None:
    """Mount the /v1 routes on app, sharing state (store, scheduler) with the native ones."""
    from pollama.server.prompt import generate_prompt

    async def completion_job(body: dict[str, Any], build, *, completions: bool = False) -> tuple[Any, Completion]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        model = await state.resolve(name)
        if "completion" not in model.capabilities:
            raise APIError(400, f'"{name}" does not support generate')
        options = request_options(model, openai_options(body, completions=completions), state.config)
        logprobs, top = _logprob_fields(body)
        return model, Completion(model, options, keep_alive_of(body), build(model), logprobs, top)

    async def respond(request: Request, body: dict[str, Any], job: Completion, chunk, final) -> Response:
        """Stream SSE chunks, or one object; chunk(message) / final(texts, done, logprobs) build them."""
        events = run_completion(state.scheduler, job)
        if not body.get("stream"):
            async def collect():
                texts, lps, done = [], [], {}
                try:
                    async for message in events:
                        if message.get("done"):
                            done = message
                        else:
                            texts.append(message["content"])
                            lps.extend(message.get("logprobs") or [])
                finally:
                    await events.aclose()
                return final("".join(texts), done, lps)

            return json_response(await unless_disconnected(request, collect()))
        include_usage = _stream_options(body)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            async for message in events:
                for out in chunk(message, include_usage):
                    yield out

        _first, all_chunks = await primed(request, chunks())
        return EventStream(sse(all_chunks), "text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        from pollama.sample.constraint import format_from_response_format

        body = await read_json(request)
        check_field_types(body, "chat")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise APIError(400, "messages are required")
        messages = openai_messages(raw_messages)
        tools, call_required = apply_tool_choice(check_tools(body.get("tools")), body.get("tool_choice"))
        try:
            fmt = format_from_response_format(body.get("response_format"))
        except ValueError as e:
            raise APIError(400, str(e)) from None
        if call_required:
            # The answer must be a call: constrain it to one (this replaces any response_format).
            fmt = tool_call_schema(tools)
        think = think_from_reasoning_effort(body)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "model is required")
        model, think = await chat_model(state.resolve, name, messages, tools, think)
        options = request_options(model, openai_options(body), state.config)
        logprobs, top = _logprob_fields(body)
        chat = ChatRequest(name=name, model=model, messages=messages, tools=tools, think=think, format=fmt,
                           options=options, keep_alive=keep_alive_of(body), logprobs=logprobs, top_logprobs=top,
                           render_only=bool(body.get("_debug_render_only")), force_tool_json=call_required)
        events = run_completion(state.scheduler, chat.job())
        ident = f"chatcmpl-{random.randint(0, 999)}"
        created = int(time.time())

        def base(**fields: Any) -> dict[str, Any]:
            return {"id": ident, "created": created, "model": name, "system_fingerprint": FINGERPRINT, **fields}

        if not body.get("stream"):
            async def collect() -> dict[str, Any]:
                texts, thinking, calls, lps, done = [], [], [], [], {}
                try:
                    async for message in events:
                        if "rendered" in message:
                            return base(object="chat.completion", choices=[], _debug_info=debug_info(message["rendered"], message.get("image_count", 0)))
                        if message.get("done"):
                            done = message
                        texts.append(message.get("content", ""))
                        thinking.append(message.get("thinking", ""))
                        calls.extend(message.get("tool_calls") or [])
                        lps.extend(message.get("logprobs") or [])
                finally:
                    await events.aclose()
                reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
                if "".join(thinking):
                    reply["reasoning"] = "".join(thinking)
                if calls:
                    reply["tool_calls"] = to_openai_tool_calls(calls)
                choice: dict[str, Any] = {"index": 0, "message": reply,
                                          "finish_reason": openai_finish_reason(done.get("done_reason"), bool(calls))}
                if lps:
                    choice["logprobs"] = {"content": _openai_logprobs(lps)}
                return base(object="chat.completion", choices=[choice], usage=_usage(done))

            return json_response(await unless_disconnected(request, collect()))

        include_usage = _stream_options(body)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            first = True
            calls_sent = False

            def chunk(delta: dict[str, Any], lps: list | None = None) -> dict[str, Any]:
                nonlocal first
                out: dict[str, Any] = {"role": "assistant"} if first else {}
                first = False
                choice: dict[str, Any] = {"index": 0, "delta": {**out, **delta}, "finish_reason": None}
                if lps:
                    choice["logprobs"] = {"content": _openai_logprobs(lps)}
                return base(object="chat.completion.chunk", choices=[choice])

            async for message in events:
                if "rendered" in message:
                    yield base(object="chat.completion.chunk", choices=[], _debug_info=debug_info(message["rendered"], message.get("image_count", 0)))
                    return
                thinking, content = message.get("thinking", ""), message.get("content", "")
                calls = to_openai_tool_calls(message.get("tool_calls") or [])
                lps = message.get("logprobs")
                if not message.get("done") or thinking or content or calls or lps or first:
                    # As Ollama: reasoning and content (or calls) that arrive together go in two chunks.
                    if thinking and (content or calls):
                        yield chunk({"content": None, "reasoning": thinking}, lps)
                        lps = None
                        thinking = ""
                    delta: dict[str, Any] = {"content": content}
                    if thinking:
                        delta["reasoning"] = thinking
                    if calls:
                        delta["tool_calls"] = calls
                        calls_sent = True
                    yield chunk(delta, lps)
                if message.get("done"):
                    yield base(object="chat.completion.chunk", choices=[{
                        "index": 0, "delta": {},
                        "finish_reason": openai_finish_reason(message.get("done_reason"), calls_sent)}])
                    if include_usage:
                        yield base(object="chat.completion.chunk", choices=[], usage=_usage(message))

        _first, all_chunks = await primed(request, chunks())
        return EventStream(sse(all_chunks), "text/event-stream")


    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json(request)
        check_field_types(body, "completions")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string")
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str):
            raise APIError(400, "suffix must be a string")

        def build(model):
            async def build_prompt(runner, num_ctx: int) -> tuple[str, list[str]]:
                return await in_thread(generate_prompt, model, prompt, system=None, template=None, suffix=suffix,
                                       context_text=None, tokenize=runner.tokenize_sync, num_ctx=num_ctx,
                                       specials=runner.specials())
            return build_prompt

        _model, job = await completion_job(body, build, completions=True)
        ident = f"cmpl-{random.randint(0, 999)}"
        created = int(time.time())
        name = body["model"]

        def base(**fields: Any) -> dict[str, Any]:
            return {"id": ident, "object": "text_completion", "created": created, "model": name,
                    "system_fingerprint": FINGERPRINT, **fields}

        def logprobs_of(entries: list) -> dict[str, Any] | None:
            if not entries:
                return None
            return {"tokens": [e.get("token", "") for e in entries],
                    "token_logprobs": [e.get("logprob", 0.0) for e in entries],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in entries]}

        def chunk(message: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
            if message.get("done"):
                out = [base(choices=[{"text": "", "index": 0, "logprobs": None,
                                      "finish_reason": _finish_reason(message.get("done_reason"))}])]
                if include_usage:
                    out.append(base(choices=[], usage=_usage(message)))
                return out
            return [base(choices=[{"text": message["content"], "index": 0,
                                   "logprobs": logprobs_of(message.get("logprobs") or []), "finish_reason": None}])]

        def final(text: str, done: dict[str, Any], lps: list) -> dict[str, Any]:
            return base(choices=[{"text": text, "index": 0, "logprobs": logprobs_of(lps),
                                  "finish_reason": _finish_reason(done.get("done_reason"))}], usage=_usage(done))

        return await respond(request, body, job, chunk, final)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        check_field_types(body, "embeddings")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise APIError(400, "invalid input: give a string or an array of strings (token arrays are not supported)")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise APIError(400, f"invalid encoding_format {encoding!r}: float or base64")
        dimensions = body.get("dimensions") or 0
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0:
            raise APIError(400, "dimensions must be a positive integer")
        name = body.get("model")
        model = await state.resolve(name)
        options = request_options(model, None, state.config)
        answer = await unless_disconnected(request, embed(
            state.scheduler, model, options, keep_alive_of(body), texts, dimensions=dimensions))
        data = []
        for i, vector in enumerate(answer["embeddings"]):
            value: Any = vector
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": value, "index": i})
        tokens = answer["prompt_eval_count"]
        return json_response({"object": "list", "data": data, "model": name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def model_entry(entry: dict[str, Any]) -> dict[str, Any]:
        from datetime import datetime

        name = entry["name"]
        namespace = name.split("/")[-2] if name.count("/") >= 1 else "library"
        created = int(datetime.fromisoformat(entry["modified_at"]).timestamp())
        return {"id": name, "object": "model", "created": created, "owned_by": namespace}

    @app.get("/v1/models")
    async def models() -> Response:
        entries = await in_thread(list_models, state.store)
        return json_response({"object": "list", "data": [model_entry(e) for e in entries]})

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        ref = await state.resolve(model)
        return json_response({"id": model, "object": "model", "created": int(ref.modified_at.timestamp()),
                              "owned_by": model.split("/")[-2] if "/" in model else "library"})
