"""Streamed model output -> content and tool calls, as Ollama's tools/ package parses them.

    parser = ToolCallParser(template, request_tools)
    for piece in pieces:
        content, calls = parser.add(piece)
    content, calls = parser.finish()

The tag a model writes before its calls comes from the template (`tool_call_tag_for`):
"<tool_call>", "[TOOL_CALLS] [", "<|python_tag|>", ... or "{" when the template shows none.
Text before the tag is content; a possible partial tag at the end is held back. With "{" or
"[" as tag, tool parsing is given up as soon as other text comes first. After the tag, each
call is a request tool's name found in the text and the balanced JSON object around it; its
arguments are `arguments` or `parameters` (an object or a JSON-encoded one) or the value of a
key named after the tool. Each call is Ollama's JSON:
{"id": "call_xxxxxxxx", "function": {"index": n, "name": ..., "arguments": {...}}}.

Where this differs from Ollama, on purpose: the top-level argument order is the model's
(Ollama's generic parser loses it through a Go map); text held back as a possible partial
tag is content at the end rather than dropped; text already sent is never sent twice at the
end (Ollama's Content() can repeat it once parsing was given up); after a first call, a bare
"{" answer is not released by brace balance (Ollama's balance check, starting at the first
call's closing brace, would send a second streamed call as content); tools without a name
are ignored; JSON strings with lone surrogate escapes get U+FFFD as Go's decoder gives them.

For models with only a Jinja template (`for_jinja`), output that opens with a JSON call,
maybe in a ```json fence or behind <tool_call>, is a call too: Ollama hands such models to
llama-server, whose Hermes-style parser reads them so.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable

from .gotemplate import Template, tool_call_tag
from .thinking import GO_SPACE

__all__ = [
    "JINJA_TOOL_CALL_TAGS",
    "ToolCallParser",
    "closes_balanced",
    "find_arguments",
    "find_tag",
    "find_tool",
    "go_json_loads",
    "jinja_tool_call_tag",
    "new_tool_call_id",
    "tool_call_tag_for",
]

# Tags recognised in a Jinja chat template, for models that carry no Go template.
JINJA_TOOL_CALL_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

# The characters the brace scanners act on; the rest is skipped at C speed.
_JSON_SPECIAL = re.compile(r'[\\"{}\[\]]')


def new_tool_call_id() -> str:
    """A tool call id as Ollama makes one: "call_" and 8 random [a-z0-9]."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def tool_call_tag_for(template: Template | str | None) -> str:
    """The tool-call tag of a Go template (Ollama's tools.parseTag), "{" when it shows none."""
    if template is None:
        return "{"
    if isinstance(template, str):
        template = Template.parse(template)
    return tool_call_tag(template) or "{"


def jinja_tool_call_tag(chat_template: str | None) -> str:
    """The tool-call tag a Jinja chat template writes (the earliest known one), else "{"."""
    found = [(chat_template.find(tag), tag) for tag in JINJA_TOOL_CALL_TAGS if chat_template and tag in chat_template]
    return min(found)[1] if found else "{"


def _tool_names(tools: Iterable[dict] | None) -> list[str]:
    names = []
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
    return names


# ---------------------------------------------------------------- scanning


def _could_grow_into_name(names: list[str], buffer: str) -> bool:
    """Whether the end of `buffer` is the start of a longer tool name (so wait for more)."""
    longest = max((len(n) for n in names), default=0)
    for i in range(1, min(len(buffer), longest) + 1):
        tail = buffer[-i:]
        if any(len(tail) < len(n) and n.startswith(tail) for n in names):
            return True
    return False


def _earliest_name(names: list[str], buffer: str, start: int = 0) -> tuple[str, int] | None:
    """The name found earliest in `buffer[start:]` (the longest on ties) and its position."""
    best, best_pos = None, -1
    for name in names:
        pos = buffer.find(name, start)
        if pos < 0:
            continue
        if best is not None and (pos > best_pos or (pos == best_pos and len(name) <= len(best))):
            continue
        best, best_pos = name, pos
    return (best, best_pos) if best is not None else None


def find_tool(names: list[str], buffer: str) -> tuple[str, int] | None:
    """The earliest tool name in `buffer` (longest on ties) and where it ends (Ollama's findTool).

    None as well while the end of the buffer could still grow into a longer name, so that
    "say_hello" is not taken for "say_hello_world" too early.
    """
    if not buffer or _could_grow_into_name(names, buffer):
        return None
    found = _earliest_name(names, buffer)
    return (found[0], found[1] + len(found[0])) if found else None


def _go_number(text: str, convert):
    value = convert(text)
    # Go decodes numbers as float64: out of its range is a decoding error.
    if abs(value) > 1.7976931348623157e308:
        raise ValueError("number out of range")
    return value


def _go_float(text: str):
    value = _go_number(text, float)
    # Go prints a whole float64 without ".0": keep it whole here too.
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _no_constant(text: str):
    raise ValueError(f"invalid JSON value {text}")


def _fix_surrogates(v):
    if isinstance(v, str):
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if _has_surrogate(v) else v
    if isinstance(v, list):
        return [_fix_surrogates(x) for x in v]
    if isinstance(v, dict):
        return {_fix_surrogates(k): _fix_surrogates(x) for k, x in v.items()}
    return v


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def go_json_loads(text: str):
    """json.Unmarshal into `any` as Go does it: no NaN/Infinity, numbers in float64's range."""
    value = json.loads(text, parse_float=_go_float, parse_int=lambda s: _go_number(s, int),
                       parse_constant=_no_constant)
    return _fix_surrogates(value)


def _as_object(value) -> tuple[bool, dict | None]:
    """Go's findMap: an object, or a string holding one (a JSON null counts, as no object)."""
    if isinstance(value, dict):
        return True, value
    if isinstance(value, str):
        try:
            decoded = go_json_loads(value)
        except (ValueError, RecursionError):
            return False, None
        if decoded is None or isinstance(decoded, dict):
            return True, decoded
    return False, None


def _arguments_in(obj: dict, tool_name: str) -> tuple[bool, dict | None]:
    """Ollama's findObject: (whether this object is the call, its arguments or None)."""
    if "name" in obj:
        for key in ("arguments", "parameters"):
            ok, args = _as_object(obj.get(key))
            if ok:
                return True, args
        return True, None
    if tool_name in obj:
        ok, args = _as_object(obj[tool_name])
        if ok:
            return True, args
    for child in obj.values():
        items = child if isinstance(child, list) else [child]
        for item in items:
            if isinstance(item, dict):
                found, args = _arguments_in(item, tool_name)
                if found:
                    return True, args
    return False, None


class _Scanner:
    """Ollama's brace scans (string and backslash aware) over a growing text, resumable.

    Each character is looked at once however often the text grows; the owner starts a new
    scanner when the text is cut at the front.
    """

    def __init__(self):
        self.pos = 0
        self.in_string = False
        self.escape_at = -2  # index of the last backslash that escapes the next character

    def structural(self, text: str):
        """Yield (index, char) of each brace or bracket outside JSON strings not yet seen."""
        for m in _JSON_SPECIAL.finditer(text, self.pos):
            i = m.start()
            self.pos = i + 1
            if i == self.escape_at + 1:
                continue  # as Ollama, a backslash escapes whatever follows, in strings or not
            c = text[i]
            if c == "\\":
                self.escape_at = i
            elif c == '"':
                self.in_string = not self.in_string
            elif not self.in_string:
                yield i, c
        self.pos = len(text)


class _ObjectFinder:
    """The first balanced JSON object of a growing text that decodes (Ollama's findArguments scan)."""

    def __init__(self):
        self.scan = _Scanner()
        self.start = -1
        self.braces = 0
        self.found: tuple[dict, int] | None = None

    def first_object(self, text: str) -> tuple[dict, int] | None:
        """(the decoded object, index of its closing brace), or None while there is none."""
        if self.found is not None:
            return self.found
        for i, c in self.scan.structural(text):
            if c == "{":
                if self.braces == 0:
                    self.start = i
                self.braces += 1
            elif c == "}":
                self.braces -= 1
                if self.braces == 0 and self.start != -1:
                    try:
                        self.found = go_json_loads(text[self.start:i + 1]), i
                    except (ValueError, RecursionError):
                        self.start = -1  # not JSON after all: look further
                        continue
                    return self.found
                self.braces = max(self.braces, 0)
        return None


def _arguments_of(found: tuple[dict, int], tool_name: str) -> tuple[dict | None, int]:
    data, end = found
    is_call, args = _arguments_in(data, tool_name)
    # An object that names no call is taken whole as the arguments.
    return (args if is_call else data), end


def find_arguments(tool_name: str, buffer: str) -> tuple[dict | None, int]:
    """Arguments of the first balanced JSON object in `buffer` that decodes, and where it ends.

    The end is the index of the object's closing brace; (None, 0) while no object is
    complete; (None, end) when the object names a call but carries no usable arguments.
    """
    found = _ObjectFinder().first_object(buffer)
    return _arguments_of(found, tool_name) if found else (None, 0)


def find_tag(buffer: str, tag: str) -> tuple[int, bool]:
    """Where `tag` starts in `buffer` (found), or where a partial tag at its end starts (not found), or -1."""
    i = buffer.find(tag)
    if i >= 0:
        return i, True
    for n in range(min(len(buffer), len(tag)), 0, -1):
        if buffer.endswith(tag[:n]):
            return len(buffer) - n, False
    return -1, False


class _Balance:
    """Whether a growing text closes a balanced run of `opening`/`closing` (Ollama's done)."""

    def __init__(self, opening: str, closing: str):
        self.opening, self.closing = opening, closing
        self.scan = _Scanner()
        self.depth = 0
        self.closed = False

    def closed_in(self, text: str) -> bool:
        if not self.closed:
            for _, c in self.scan.structural(text):
                if c == self.opening:
                    self.depth += 1
                elif c == self.closing:
                    self.depth -= 1
                    if self.depth == 0:
                        self.closed = True
                        break
        return self.closed


def closes_balanced(buffer: str, opening: str, closing: str) -> bool:
    """Whether `buffer` closes a balanced run of `opening`/`closing` outside JSON strings."""
    return _Balance(opening, closing).closed_in(buffer)


# ---------------------------------------------------------------- the parser


def _call_start(text: str) -> bool | None:
    """Whether `text` opens a JSON tool call as llama.cpp's Hermes parser reads one; None: undecided.

    The call may sit in a ```json (or ```xml, or bare ```) fence and behind <tool_call>;
    then comes {"name". Only whitespace may come before it.
    """
    t = text.lstrip(GO_SPACE)
    for fence in ("```json\n", "```xml\n", "```\n"):
        if t.startswith(fence):
            t = t[len(fence):]
            break
        if fence.startswith(t):
            return None
    else:
        if t.startswith("`"):
            return False
    t = t.lstrip(GO_SPACE)
    if t.startswith("<") or not t:
        if "<tool_call>".startswith(t):
            return None
        if not t.startswith("<tool_call>"):
            return False
        t = t[len("<tool_call>"):].lstrip(GO_SPACE)
    if not t:
        return None
    if not t.startswith("{"):
        return False
    t = t[1:].lstrip(GO_SPACE)
    if t.startswith('"name"'):
        return True
    return None if '"name"'.startswith(t) else False


class ToolCallParser:
    """Ollama's streaming tool-call parser: add(piece) -> (content, new tool calls)."""

    LOOKING_FOR_TAG = "LookingForTag"
    TOOL_CALLING = "ToolCalling"
    DONE = "Done"

    def __init__(self, template: Template | str | None, tools: Iterable[dict] | None = None, *,
                 json_start: bool = False, new_id: Callable[[], str] = new_tool_call_id):
        """`template` is a Go template (its tag is inferred) or the tag itself.

        With `json_start`, output that opens with a JSON call ({"name" ..., maybe in a
        ```json fence or behind <tool_call>) is a call whatever the tag, as llama.cpp reads
        the output of models that only have a Jinja template (Ollama hands those to it).
        """
        # A string is the tag itself; a Template gives its tag as Ollama infers it.
        if isinstance(template, str) and template:
            self.tag = template
        else:
            self.tag = tool_call_tag_for(template if isinstance(template, Template) else None)
        self.names = _tool_names(tools)
        self.state = self.LOOKING_FOR_TAG
        self.calls: list[dict] = []
        self._new_id = new_id
        self._longest_name = max((len(n) for n in self.names), default=0)
        # The bracket whose balanced close ends a bare-JSON answer that was no call.
        self._bracket = self.tag if self.tag in ("{", "[") else None
        self._json_start = json_start
        self._set_buffer("")

    @classmethod
    def for_jinja(cls, chat_template: str | None, tools: Iterable[dict] | None = None, **kwargs) -> ToolCallParser:
        """A parser for a model prompted by its Jinja chat template: its tag, and JSON calls at the start."""
        kwargs.setdefault("json_start", True)
        return cls(jinja_tool_call_tag(chat_template), tools, **kwargs)

    def _set_buffer(self, text: str) -> None:
        # The scans resume over a growing buffer; cutting its front starts them again.
        self._buffer = text
        self._objects = _ObjectFinder()
        self._balance = _Balance(self._bracket, "}" if self._bracket == "{" else "]") if self._bracket else None
        self._no_name_before = 0

    def add(self, text: str) -> tuple[str, list[dict]]:
        """Take the next piece of output; return the content now certain and the calls completed."""
        if self.state == self.DONE:
            return text, []
        content = ""
        if self.state == self.LOOKING_FOR_TAG:
            buffer = self._buffer + text
            starts_call = _call_start(buffer) if self._json_start else False
            if starts_call is None:
                self._buffer = buffer  # too early to tell: hold it all
                return "", []
            if starts_call:
                # From here on it is a bare-JSON call: released whole if it turns out to be none.
                self._bracket = "{"
                self._set_buffer(buffer)
                self.state = self.TOOL_CALLING
                return self._calls_then_content("")
            self._json_start = False
            i, found = find_tag(buffer, self.tag)
            content, held = (buffer, "") if i < 0 else (buffer[:i], buffer[i:])
            # With a bare "{" or "[" as tag, only output that starts with it can be a call.
            if self.tag in ("{", "[") and content.strip(GO_SPACE):
                self.state = self.DONE
                self._set_buffer("")
                return content + held, []
            self._set_buffer(held)
            if not found:
                return content, []
            self.state = self.TOOL_CALLING
        else:
            self._buffer += text
        return self._calls_then_content(content)

    def _calls_then_content(self, content: str) -> tuple[str, list[dict]]:
        calls = []
        while (call := self._next_call()) is not None:
            calls.append(call)
        # Once a call was made nothing is released any more (Ollama's Content() says the
        # same); Ollama's own check would go on and send a second streamed call as content.
        if not self.calls and self._balance is not None and self._balance.closed_in(self._buffer):
            # A bare JSON object or list that held no (more) tool calls: it was content after all.
            self.state = self.DONE
            content = self._buffer
            self._set_buffer("")
        return content, calls

    def finish(self) -> tuple[str, list[dict]]:
        """End of output: the content still held back (Ollama's Content()), and no further calls."""
        buffer = self._buffer
        self._set_buffer("")
        state, self.state = self.state, self.DONE
        if state == self.LOOKING_FOR_TAG:
            return buffer, []  # the start of a tag that never came
        if not self.calls and self._bracket:
            return buffer, []
        return "", []

    def _next_call(self) -> dict | None:
        buffer = self._buffer
        if not buffer or _could_grow_into_name(self.names, buffer):
            return None
        found = _earliest_name(self.names, buffer, self._no_name_before)
        if found is None:
            # No name starts before here: later searches need only look at what is new.
            self._no_name_before = max(0, len(buffer) - self._longest_name + 1)
            return None
        name, pos = found
        obj = self._objects.first_object(buffer)
        if obj is None:
            return None
        args, close = _arguments_of(obj, name)
        if args is None:
            return None  # as Ollama: an object naming a call without arguments stops parsing
        # As Ollama: the buffer goes on from the object's closing brace (which stays in it).
        self._set_buffer(buffer[max(pos + len(name), close):])
        call = {"id": self._new_id(), "function": {"index": len(self.calls), "name": name, "arguments": args}}
        self.calls.append(call)
        return call
