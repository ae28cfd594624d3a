"""A chat answer, piece by piece -> thinking, content and tool calls, as Ollama's chat handler splits it.

    parser = ChatOutputParser(template, tools=request_tools, think=request_think, prompt=rendered)
    for piece in pieces:
        delta = parser.add(piece)      # {"thinking": ..., "content": ..., "tool_calls": [...]}
    delta = parser.finish()

Thinking comes first (only when `think` asks for it and the template shows its tags), then
tool calls are looked for in what is left (only when the request has tools). A model that
answers in gpt-oss's harmony format (`harmony=True`) is split by its channels instead
(pollama.template.harmony), thinking whatever `think` says, as Ollama's harmony parser does. The OpenAI
helpers at the end turn the native tool calls into OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .gemma4calls import CALL_PREFIX, Gemma4ToolCallParser
from .gofmt import OrderedMap, go_json
from .gotemplate import Template, parse_cached
from .harmony import FunctionNames, HarmonyParser
from .thinking import GO_SPACE, ThinkingParser, infer_thinking_tags, jinja_thinking_tags
from .toolcalls import (
    ToolCallParser,
    jinja_tool_call_tag,
    new_tool_call_id,
    tool_call_tag_for,
)

__all__ = [
    "ChatOutputParser",
    "arguments_json",
    "openai_finish_reason",
    "think_enabled",
    "to_openai_tool_calls",
]

_THINK_LEVELS = ("low", "medium", "high", "max")


def think_enabled(think) -> bool:
    """Whether a request's `think` turns thinking on (Ollama's ThinkValue.Bool)."""
    return think is True or (isinstance(think, str) and think in _THINK_LEVELS)


def _delta(thinking: str = "", content: str = "", tool_calls: list | None = None) -> dict:
    return {"thinking": thinking, "content": content, "tool_calls": tool_calls or []}


class ChatOutputParser:
    """Splits a streamed chat answer into thinking, content and tool-call deltas."""

    def __init__(self, template: Template | str | None = None, tools: Iterable[dict] | None = None,
                 think: bool | str | None = None, *, prompt: str = "", chat_template: str | None = None,
                 thinking_tags: tuple[str, str] | None = None, tool_tag: str | None = None,
                 harmony: bool = False, new_id: Callable[[], str] = new_tool_call_id):
        """`template` is the model's Go template; without one, `chat_template` (Jinja text) gives the tags.

        `prompt` is the rendered prompt: when it ends with the opening thinking tag the model
        starts inside the thinking block, as Ollama assumes. `thinking_tags` and `tool_tag`
        override what the templates show.
        """
        self.harmony: HarmonyParser | None = None
        self.thinking: ThinkingParser | None = None
        self.tools: ToolCallParser | Gemma4ToolCallParser | None = None
        if harmony:
            names = FunctionNames(t["function"]["name"] for t in tools or () if t.get("function", {}).get("name"))
            self.harmony = HarmonyParser(prompt=prompt, names=names, new_id=new_id)
            self.thinking_tags = None
            if tools and tool_tag is not None:
                # A call the format forced (one bare JSON call) is the final message's text.
                self.tools = ToolCallParser(tool_tag, list(tools), json_start=False, new_id=new_id)
            return
        if isinstance(template, str):
            template = parse_cached(template)  # parsed already, off the event loop, for the prompt
        if thinking_tags is None:
            thinking_tags = infer_thinking_tags(template) if template is not None else jinja_thinking_tags(chat_template)
        self.thinking_tags = thinking_tags
        if think_enabled(think) and thinking_tags is not None:
            self.thinking = ThinkingParser(*thinking_tags)
            if prompt.strip(GO_SPACE).endswith(thinking_tags[0]):
                self.thinking.open()
        tools = list(tools or [])
        if tools and template is None and tool_tag is None and CALL_PREFIX in (chat_template or ""):
            # Gemma 4 writes its calls in a notation of its own (gemma4calls.py).
            self.tools = Gemma4ToolCallParser(tools, new_id=new_id)
        elif tools:
            if tool_tag is None:
                tool_tag = tool_call_tag_for(template) if template is not None else jinja_tool_call_tag(chat_template)
            # Without a Go template Ollama's answer comes from llama-server, which also reads
            # a JSON call at the start of the output (```json fenced or not) as a call.
            self.tools = ToolCallParser(tool_tag, tools, json_start=template is None, new_id=new_id)

    @property
    def tool_calls(self) -> list[dict]:
        """Every tool call parsed so far."""
        if self.harmony is not None:
            return list(self.harmony.calls) + (list(self.tools.calls) if self.tools is not None else [])
        return list(self.tools.calls) if self.tools is not None else []

    def add(self, piece: str) -> dict:
        """Take the next piece of output; return the thinking, content and tool calls now certain."""
        if self.harmony is not None:
            return self._harmony_delta(*self.harmony.add(piece))
        thinking, content = self.thinking.add(piece) if self.thinking is not None else ("", piece)
        return self._with_tools(thinking, content)

    def finish(self) -> dict:
        """End of output: whatever was still held back."""
        if self.harmony is not None:
            delta = self._harmony_delta(*self.harmony.finish())
            if self.tools is not None:
                delta["content"] += self.tools.finish()[0]
            return delta
        thinking, content = self.thinking.finish() if self.thinking is not None else ("", "")
        delta = self._with_tools(thinking, content)
        if self.tools is not None:
            rest, _ = self.tools.finish()
            delta["content"] += rest
        return delta

    def _harmony_delta(self, thinking: str, content: str, calls: list[dict]) -> dict:
        delta = self._with_tools(thinking, content)
        delta["tool_calls"] = calls + delta["tool_calls"]
        return delta

    def _with_tools(self, thinking: str, content: str) -> dict:
        if self.tools is None or not content:
            return _delta(thinking, content)
        content, calls = self.tools.add(content)
        return _delta(thinking, content, calls)


# ---------------------------------------------------------------- OpenAI


def arguments_json(arguments: dict) -> str:
    """Tool-call arguments as Go's json.Marshal writes them (the model's key order, HTML-escaped)."""
    return go_json(OrderedMap(arguments))


def to_openai_tool_calls(calls: Iterable[dict]) -> list[dict]:
    """Native tool calls -> OpenAI's tool_calls (Ollama's openai.ToToolCalls): arguments as a JSON string."""
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append({
            "id": call.get("id", ""),
            "index": function.get("index", 0),
            "type": "function",
            "function": {"name": function.get("name", ""), "arguments": arguments_json(function.get("arguments") or {})},
        })
    return out


def openai_finish_reason(done_reason: str | None, tool_calls_sent: bool) -> str:
    """OpenAI's finish_reason: "tool_calls" replaces "stop" when tool calls were sent, as Ollama does."""
    reason = done_reason or "stop"
    return "tool_calls" if reason == "stop" and tool_calls_sent else reason
