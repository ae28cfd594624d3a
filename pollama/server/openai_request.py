"""OpenAI's request fields in native terms: sampling options, the fields' types, reasoning
effort as think, tool_choice, messages (tool calls, content parts, image URLs). Shared by the
chat/completions routes (openai.py) and the Responses and Anthropic ones.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pollama.server.errors import APIError
from pollama.server.http import field, json_type, loads_checked


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
