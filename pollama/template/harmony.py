"""gpt-oss's "harmony" format: streamed output -> thinking, content and tool calls.

A harmony message is `<|start|>{header}<|message|>{text}<|end|>`; the header names the role,
the channel (`<|channel|>analysis`, `commentary` or `final`) and, for a tool call, the
recipient (`to=functions.NAME`, before or after the channel), sometimes a content type
(`<|constrain|>json`). The model answers in several messages: analysis (its thinking),
then either a tool call on commentary, ended by `<|call|>`, or the answer on final, ended by
`<|return|>`. As Ollama's harmony package maps them: analysis -> thinking, a message with a
recipient -> a tool call (JSON arguments), final and plain commentary -> content.

    parser = HarmonyParser(prompt=rendered)
    for piece in pieces:
        thinking, content, calls = parser.add(piece)
    thinking, content, calls = parser.finish()

The prompt ends inside the assistant's first message (`<|start|>assistant`, or further on
when a template opens a channel for the model): what the prompt left open after its last
`<|start|>` is where the parser starts, which is Ollama's implicit start (and its prefill of
a last assistant message) read off the prompt itself.

Where this differs from Ollama, on purpose: `<|call|>` and `<|return|>` end a message as
`<|end|>` does (they are end-of-generation tokens, so they arrive as text only from a
stream that was not stopped there), so each tool call is parsed when its message ends and
several calls in one answer all come out (Ollama parses one call, at the end of the stream);
arguments that are not JSON (a call cut short by num_predict) come out as content rather
than failing the request; a message's text still held back at the end of the stream (a
possible end tag) is handed out. As in Ollama, an unfinished header (no `<|message|>` yet) is
never text of the answer.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Iterable

from .thinking import GO_SPACE
from .toolcalls import go_json_loads, new_tool_call_id

__all__ = ["HARMONY_PARSER", "FunctionNames", "HarmonyParser", "harmony_tools", "is_harmony", "is_harmony_chat_template"]

START, MESSAGE, CHANNEL, CONSTRAIN = "<|start|>", "<|message|>", "<|channel|>", "<|constrain|>"
MESSAGE_ENDS = ("<|end|>", "<|call|>", "<|return|>")
# What the model writes between its thinking and its answer (Ollama forces this very text
# into the prompt when structured output starts after thinking).
FINAL_OPENING = "<|end|><|start|>assistant<|channel|>final<|message|>"
HARMONY_PARSER = "harmony"  # the Modelfile's PARSER name (Ollama's)
_FAMILIES = ("gptoss", "gpt-oss")


def is_harmony_chat_template(chat_template: str | None) -> bool:
    """Whether a Jinja chat template writes harmony (llama.cpp's test for the gpt-oss format)."""
    return bool(chat_template) and CHANNEL in chat_template


def is_harmony(*, family: str = "", template: str | None = None, chat_template: str | None = None,
               parser: str = "") -> bool:
    """Whether a model's output is parsed as harmony.

    Ollama's rules: the Modelfile's PARSER says so; or the model is of the gpt-oss family and
    its Go template writes `<|start|>` and `<|end|>` (shouldUseHarmony). A model without a Go
    template is prompted through its Jinja chat template, as llama-server prompts it for
    Ollama; there, as llama.cpp decides, a template that writes `<|channel|>` is harmony.
    """
    if parser:
        return parser == HARMONY_PARSER
    if template is not None:
        return family in _FAMILIES and START in template and "<|end|>" in template
    return is_harmony_chat_template(chat_template)


class State(enum.Enum):
    LOOKING_FOR_START = "LookingForMessageStart"
    HEADER = "ParsingHeader"
    CONTENT = "ParsingContent"


class FunctionNames:
    """User function names <-> names harmony can write (TypeScript identifiers), as Ollama maps them.

    Ollama renames the request's tools this way before its Go template writes them, and maps
    the name of a call back; the browser and python built-ins keep their names.
    """

    BUILTINS = ("browser.open", "browser.search", "browser.find", "python")

    def __init__(self, names: Iterable[str] = ()):
        self.to_harmony: dict[str, str] = {}
        self.to_user: dict[str, str] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> str:
        """The harmony name for `name` (a new one gets a free identifier: f, f_2, f_3, ...)."""
        if name in self.BUILTINS:
            converted = name
        else:
            base = _identifier(name)
            converted, n = base, 2
            while converted in self.to_user:
                converted, n = f"{base}_{n}", n + 1
        self.to_harmony[name] = converted
        self.to_user[converted] = name
        return converted

    def user_name(self, harmony_name: str) -> str:
        return self.to_user.get(harmony_name, harmony_name)


def harmony_tools(tools: Iterable[dict]) -> list[dict]:
    """The request's tools with the names harmony can write, for a Go template to show (Ollama
    renames them so; the parser, given the same tools, maps a call's name back)."""
    names = FunctionNames()
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            tool = {**tool, "function": {**function, "name": names.add(function["name"])}}
        out.append(tool)
    return out


def _identifier(name: str) -> str:
    # Spaces, dashes and dots become "_"; letters, decimal digits (Go's unicode.IsLetter and
    # IsDigit), "_" and "$" stay; the rest goes.
    out = "".join("_" if c in " -." else c for c in name
                  if c in " -._$" or c.isalpha() or unicodedata.category(c) == "Nd")
    if not out:
        return "unnamed"
    return "_" + out if out[0] in "0123456789" else out


def _overlap(text: str, tags: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper start of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def parse_header(raw: str) -> tuple[str, str, str]:
    """(role, channel, recipient) of a message header, as Ollama's parseHeader reads it."""
    raw = raw.replace(CONSTRAIN, " " + CONSTRAIN, 1).strip(GO_SPACE)
    channel = ""
    at = raw.find(CHANNEL)
    if at >= 0:
        after = raw[at + len(CHANNEL):]
        m = re.search(f"[{re.escape(GO_SPACE)}]", after)
        end = m.start() if m else len(after)
        channel = after[:end]
        raw = (raw[:at] + after[end:]).strip(GO_SPACE)
    words = raw.split()
    if not words:
        return "", channel, ""
    role, recipient = words[0], ""
    if role.startswith("to="):
        role, recipient = "tool", role[3:]
    elif len(words) > 1 and words[1].startswith("to="):
        recipient = words[1][3:]
    return role, channel, recipient


def open_header(prompt: str) -> str:
    """The header of the message the prompt leaves open for the model: the text from its last
    `<|start|>` up to `<|message|>` (a prefilled text after it is the prompt's, not output).
    Ollama's implicit start, "<|start|>assistant", when the prompt left no message open."""
    at = prompt.rfind(START)
    tail = prompt[at:] if at >= 0 else ""
    if not tail or any(t in tail for t in MESSAGE_ENDS):
        return START + "assistant"
    header, tag, _ = tail.partition(MESSAGE)
    return header + tag


class HarmonyParser:
    """Splits a streamed harmony answer into (thinking, content, tool calls) deltas."""

    def __init__(self, *, prompt: str = "", names: FunctionNames | None = None,
                 new_id: Callable[[], str] = new_tool_call_id):
        self.names = names or FunctionNames()
        self._new_id = new_id
        self.state = State.LOOKING_FOR_START
        self._held = ""
        self._kind = "content"  # where the current message's text goes: thinking, content or tool
        self._recipient = ""
        self._arguments: list[str] = []
        self.calls: list[dict] = []
        self._prefix = open_header(prompt)
        self._started = False

    def format_after(self) -> str | None:
        """Where structured output starts: at once when the prompt opened the final channel or a
        call for the model, else once the model opens its final message."""
        _, channel, recipient = parse_header(self._prefix.removesuffix(MESSAGE))
        return None if channel == "final" or recipient else FINAL_OPENING

    def add(self, piece: str) -> tuple[str, str, list[dict]]:
        """Take the next piece of output; return the thinking, content and calls now certain."""
        if not self._started:
            self._started = True
            piece = self._prefix + piece
        self._held += piece
        out = {"thinking": [], "content": []}
        calls: list[dict] = []
        while self._step(out, calls):
            pass
        return "".join(out["thinking"]), "".join(out["content"]), calls

    def finish(self) -> tuple[str, str, list[dict]]:
        """End of output: a message cut short ends here (a call with whole JSON arguments is made)."""
        thinking, content, calls = self.add("")
        held, self._held = self._held, ""
        out = {"thinking": [thinking], "content": [content]}
        if self.state is State.CONTENT:
            self._emit(held, out)
            self._end_message(out, calls)
        elif self.state is State.LOOKING_FOR_START:
            out["content"].append(held)  # text outside any message (Ollama drops it)
        self.state = State.LOOKING_FOR_START
        return "".join(out["thinking"]), "".join(out["content"]), calls

    def _step(self, out: dict, calls: list[dict]) -> bool:
        held = self._held
        if self.state is State.LOOKING_FOR_START:
            before, tag, after = held.partition(START)
            if not tag:
                return False
            self._held, self.state = after, State.HEADER
            if before.strip(GO_SPACE):
                out["content"].append(before)  # text between messages: Ollama drops it with a warning
            return True
        if self.state is State.HEADER:
            header, tag, after = held.partition(MESSAGE)
            if not tag:
                return False
            self._held, self.state = after, State.CONTENT
            self._open_message(*parse_header(header))
            return True
        # In a message: up to its end tag, or all but what could be the start of one.
        ends = [(held.find(t), t) for t in MESSAGE_ENDS if t in held]
        if ends:
            at, tag = min(ends)
            self._emit(held[:at], out)
            self._held, self.state = held[at + len(tag):], State.LOOKING_FOR_START
            self._end_message(out, calls)
            return True
        keep = _overlap(held, MESSAGE_ENDS)
        self._emit(held[:len(held) - keep], out)
        self._held = held[len(held) - keep:]
        return False

    def _open_message(self, role: str, channel: str, recipient: str) -> None:
        # Ollama: a recipient on analysis or commentary is a call; analysis is thinking;
        # final, plain commentary and anything else is content.
        if recipient and channel in ("analysis", "commentary"):
            self._kind, self._recipient = "tool", recipient
        elif channel == "analysis":
            self._kind = "thinking"
        else:
            self._kind = "content"

    def _emit(self, text: str, out: dict) -> None:
        if not text:
            return
        if self._kind == "tool":
            self._arguments.append(text)
        else:
            out[self._kind].append(text)

    def _end_message(self, out: dict, calls: list[dict]) -> None:
        if self._kind == "tool":
            raw = "".join(self._arguments)
            call = self._call(raw)
            if call is not None:
                calls.append(call)
            else:
                out["content"].append(raw)  # not JSON arguments: Ollama fails the request here
        self._kind, self._recipient, self._arguments = "content", "", []

    def _call(self, raw: str) -> dict | None:
        try:
            arguments = go_json_loads(raw) if raw.strip(GO_SPACE) else {}
        except (ValueError, RecursionError):
            return None
        if not isinstance(arguments, dict):
            return None
        name = self._recipient.removeprefix("functions.")
        call = {"id": self._new_id(), "function": {"index": len(self.calls), "name": self.names.user_name(name),
                                                   "arguments": arguments}}
        self.calls.append(call)
        return call
