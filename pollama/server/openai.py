"""OpenAI's API over the native one: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models. Requests are translated to native requests and answers back, as Ollama's
middleware does; errors take OpenAI's shape {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import base64
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
    json_bytes,
    json_response,
    primed,
    read_json,
    unless_disconnected,
)
from pollama.server.native_generate import ChatRequest, debug_info
from pollama.server.native_models import list_models
from pollama.server.openai_request import (
    _logprob_fields,
    apply_tool_choice,
    check_field_types,
    openai_messages,
    openai_options,
    think_from_reasoning_effort,
)
from pollama.server.options import request_options
from pollama.template.output import openai_finish_reason, to_openai_tool_calls

FINGERPRINT = "fp_ollama"


def openai_error(status: int, message: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "api_error"
    if status == 404:
        kind = "not_found_error" if "model" in message else kind
    return json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _stream_options(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return bool(isinstance(opts, dict) and opts.get("include_usage"))


def _finish_reason(done_reason: str | None) -> str:
    return "length" if done_reason == "length" else "stop"


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage; where the answer was decoded speculatively, its draft tokens as OpenAI
    counts a Predicted Output's: accepted and rejected prediction tokens (Ollama sends none)."""
    prompt, completion = done.get("prompt_eval_count", 0), done.get("eval_count", 0)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    drafted, accepted = done.get("draft_count", 0), done.get("draft_accepted_count", 0)
    if drafted:
        usage["completion_tokens_details"] = {"accepted_prediction_tokens": accepted,
                                              "rejected_prediction_tokens": drafted - accepted}
    return usage


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
