"""Gemma 4's tool calls, as its chat template writes them (and llama.cpp's gemma4 parser reads them):

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

Arguments are Gemma's own notation, not JSON: keys bare, strings between <|"|> marks, numbers,
true/false, {...} objects and [...] lists. The parser has the streaming interface of
toolcalls.ToolCallParser (add(piece) -> (content, calls), finish()): text outside calls is
content; a call is held until its closing tag and then given as Ollama's JSON call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from .toolcalls import find_tag, new_tool_call_id

OPEN, CLOSE, QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
CALL_PREFIX = OPEN + "call:"  # what the template writes, by which a template is known to use these


class Gemma4ToolCallParser:
    """Streams content and Gemma 4 tool calls out of a model's answer."""

    def __init__(self, tools: Iterable[dict] | None = None, *, new_id: Callable[[], str] = new_tool_call_id):
        self.names = {(t.get("function") or {}).get("name") for t in tools or [] if isinstance(t, dict)}
        self.calls: list[dict] = []
        self._new_id = new_id
        self._buffer = ""

    def add(self, text: str) -> tuple[str, list[dict]]:
        """Take the next piece of output; return the content now certain and the calls completed."""
        self._buffer += text
        content, calls = "", []
        while True:
            start, found = find_tag(self._buffer, OPEN)
            if start < 0:
                content, self._buffer = content + self._buffer, ""
                return content, calls
            content, self._buffer = content + self._buffer[:start], self._buffer[start:]
            end = self._buffer.find(CLOSE) if found else -1
            if end < 0:
                return content, calls  # a call (or a tag) not finished yet
            block, self._buffer = self._buffer[: end + len(CLOSE)], self._buffer[end + len(CLOSE):]
            call = self._call(block[len(OPEN): end])
            if call is None:
                content += block  # no call of a requested tool: the text stays the answer's
            else:
                self.calls.append(call)
                calls.append(call)

    def finish(self) -> tuple[str, list[dict]]:
        """End of output: whatever was held back (an unfinished call) is content."""
        rest, self._buffer = self._buffer, ""
        return rest, []

    def _call(self, body: str) -> dict | None:
        if not body.startswith("call:") or "{" not in body:
            return None
        name, _, args = body[len("call:"):].partition("{")
        if name not in self.names:
            return None
        try:
            arguments, end = _value("{" + args, 0)
        except (ValueError, IndexError):
            return None
        if not isinstance(arguments, dict) or ("{" + args)[end:].strip():
            return None
        return {"id": self._new_id(), "function": {"index": len(self.calls), "name": name, "arguments": arguments}}


def _value(text: str, i: int) -> tuple[Any, int]:
    """The value at text[i:] in Gemma's notation, and where it ends."""
    if text.startswith(QUOTE, i):
        end = text.index(QUOTE, i + len(QUOTE))
        return text[i + len(QUOTE): end], end + len(QUOTE)
    if text[i] == "{":
        out: dict[str, Any] = {}
        i += 1
        while text[i] != "}":
            if text.startswith(QUOTE, i):
                key, i = _value(text, i)
            else:
                colon = text.index(":", i)
                key, i = text[i:colon].strip(), colon
            if text[i] != ":":
                raise ValueError("expected ':'")
            out[key], i = _value(text, i + 1)
            if text[i] == ",":
                i += 1
        return out, i + 1
    if text[i] == "[":
        items = []
        i += 1
        while text[i] != "]":
            item, i = _value(text, i)
            items.append(item)
            if text[i] == ",":
                i += 1
        return items, i + 1
    end = i
    while end < len(text) and text[end] not in ",}]":
        end += 1
    return _scalar(text[i:end]), end


def _scalar(word: str) -> Any:
    if word in ("true", "false"):
        return word == "true"
    if word in ("null", "None"):
        return None
    try:
        return json.loads(word)  # numbers
    except ValueError:
        return word
