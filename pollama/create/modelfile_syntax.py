"""The Modelfile's syntax, as Ollama's `parser/parser.go` reads and writes it: the
instructions, one Command, ModelfileError, the scanner (reading) and the quoting of values
(writing). modelfile.py says what a whole Modelfile means; its docstring lists the quirks.
"""

from __future__ import annotations

import dataclasses
import re

INSTRUCTIONS = (
    "from", "license", "template", "system", "adapter", "draft",
    "renderer", "parser", "parameter", "message", "requires",
)  # fmt: skip
MESSAGE_ROLES = ("system", "user", "assistant")

# Command names that are not parameters (FROM is stored as "model", as Ollama does).
_NOT_PARAMETERS = frozenset({"model", "license", "template", "system", "adapter", "draft",
                             "renderer", "parser", "requires", "message"})  # fmt: skip

_INSTRUCTION_LIST = (
    'command must be one of "from", "license", "template", "system", "adapter", '
    '"draft", "renderer", "parser", "parameter", "message", or "requires"'
)
_ROLE_LIST = 'message role must be one of "system", "user", or "assistant"'


class ModelfileError(ValueError):
    """A Modelfile Ollama would refuse; the message says where, as `(line N): ...`."""

    def __init__(self, msg: str, line: int = 0):
        self.line = line
        self.msg = msg
        super().__init__(f"(line {line}): {msg}" if line > 0 else msg)


@dataclasses.dataclass(frozen=True)
class Command:
    """One instruction, named and valued as Ollama's `parser.Command`."""

    # "model" for FROM, the lower-case instruction, or for PARAMETER the parameter's name.
    name: str
    # The unquoted value; for MESSAGE "role: content", as Ollama keeps it.
    args: str
    line: int = dataclasses.field(default=0, compare=False)  # where it starts, 1-based

    def to_text(self, *, strict: bool = True) -> str:
        """The command as one Modelfile instruction (Ollama's `Command.String()`)."""
        if self.name == "model":
            return f"FROM {_quote(self.args, 'FROM', strict)}"
        if self.name == "message":
            role, _, content = self.args.partition(": ")
            return f"MESSAGE {role} {_quote(content, 'MESSAGE', strict)}"
        if self.name in _NOT_PARAMETERS:
            keyword = self.name.upper()
            return f"{keyword} {_quote(self.args, keyword, strict)}"
        return f"PARAMETER {self.name} {_quote(self.args, f'PARAMETER {self.name}', strict)}"


# --- reading ----------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # Go wraps the reader in BOMOverride(UTF8 decoder): a BOM picks the encoding and is
    # dropped; bad bytes become U+FFFD.
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", errors="replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", errors="replace")
    return data.decode("utf-8", errors="replace")


def _is_print(ch: str) -> bool:
    # Go's strconv.IsPrint (letters, marks, numbers, punctuation, symbols, ASCII space)
    # is Python's isprintable (not "Other" nor "Separator", but ASCII space).
    return ch.isprintable()


def _is_letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


_SPACE = " \t"
_NEWLINE = "\r\n"
_TRIM = " \t\r\n"  # Go's TrimSpace; other spaces never reach a value (not printable)


def _unquote(s: str) -> str | None:
    """A trimmed value without its quotes, or None while a quote is still open."""
    if s.startswith('"""'):
        return s[3:-3] if len(s) >= 6 and s.endswith('"""') else None
    if s.startswith('"'):
        return s[1:-1] if len(s) >= 2 and s.endswith('"') else None
    return s


class _ValueReader:
    """The value part of an instruction, fed one character at a time."""

    def __init__(self) -> None:
        self.buf: list[str] = []

    def feed(self, ch: str) -> str | None:
        """Take one character; at a line break that closes the value, return the value."""
        if ch in _NEWLINE:
            value = _unquote("".join(self.buf).strip(_TRIM))
            if value is not None:
                return value
            self.buf.append(ch)  # inside quotes: line breaks are part of the value
        elif ch in _SPACE or _is_print(ch):
            self.buf.append(ch)
        return None

    def finish(self) -> str | None:
        """The value at the end of the input, or None if a quote is still open."""
        return _unquote("".join(self.buf).strip(_TRIM))

    def open_quote(self) -> str:
        return '"""' if "".join(self.buf).lstrip(_TRIM).startswith('"""') else '"'


class _Scanner:
    """Ollama's state machine: between instructions, in a name, a parameter name, a
    message role, a value, or a comment."""

    def __init__(self, text: str):
        self.text = text
        self.commands: list[Command] = []

    def scan(self) -> list[Command]:
        text = self.text
        state = "between"
        word: list[str] = []  # instruction name, parameter name or role being read
        name = role = ""
        value = _ValueReader()
        line = start_line = 1
        start = 0  # index where the current instruction or word began
        for i, ch in enumerate(text):
            if i and (text[i - 1] == "\n" or (text[i - 1] == "\r" and ch != "\n")):
                line += 1

            if state == "between":
                if ch == "#":
                    state = "comment"
                elif ch not in _SPACE + _NEWLINE:
                    state, start, start_line = "name", i, line
                    word = [ch] if _is_print(ch) else []
            elif state == "comment":
                if ch in _NEWLINE:
                    state = "between"
            elif state == "name":
                if _is_letter(ch):
                    word.append(ch)
                elif ch in _SPACE:
                    keyword = "".join(word).lower()
                    if keyword not in INSTRUCTIONS:
                        raise ModelfileError(f"unknown instruction {self._token(start)!r}: {_INSTRUCTION_LIST}", line)
                    if keyword == "parameter":
                        state, word, start = "parameter", [], i + 1
                    elif keyword == "message":
                        state, word, start = "role", [], i + 1
                    else:
                        state, name, value = "value", "model" if keyword == "from" else keyword, _ValueReader()
                else:
                    self._bad_name_end(ch, start, line, word)
            elif state == "parameter":
                if _is_letter(ch) or "0" <= ch <= "9" or ch == "_":
                    word.append(ch)
                elif ch in _SPACE:
                    # A second space makes an unnamed parameter in Ollama too.
                    state, name, value = "value", "".join(word), _ValueReader()
                elif ch in _NEWLINE:
                    raise ModelfileError(_missing_value(f"PARAMETER {''.join(word)}".rstrip()), line)
                else:
                    raise ModelfileError(f"invalid parameter name {self._token(start)!r}: "
                                         "only letters, digits and _ may be used", line)  # fmt: skip
            elif state == "role":
                if _is_letter(ch):
                    word.append(ch)
                elif ch in _SPACE:
                    role = "".join(word)
                    if role not in MESSAGE_ROLES:
                        raise ModelfileError(f"invalid role {role!r}: {_ROLE_LIST}", line)
                    state, name, value = "value", "message", _ValueReader()
                elif ch in _NEWLINE and "".join(word) in MESSAGE_ROLES:
                    raise ModelfileError(_missing_value(f"MESSAGE {''.join(word)}"), line)
                else:
                    raise ModelfileError(f"invalid role {self._token(start)!r}: {_ROLE_LIST}", line)
            elif state == "value":
                done = value.feed(ch)
                if done is not None:
                    self._emit(name, role, done, start_line)
                    state, role = "between", ""

        # End of input: only a value (closed) or nothing may be open.
        if state == "value":
            done = value.finish()
            if done is None:
                quote = value.open_quote()
                raise ModelfileError(f"unterminated {quote} quote: no closing {quote} before the end of the file",
                                     start_line)  # fmt: skip
            self._emit(name, role, done, start_line)
        elif state == "name":
            self._bad_name_end("", start, line, word)
        elif state == "parameter":
            raise ModelfileError(_missing_value(f"PARAMETER {''.join(word)}".rstrip()), line)
        elif state == "role":
            what = "".join(word)
            if what in MESSAGE_ROLES:
                raise ModelfileError(_missing_value(f"MESSAGE {what}"), line)
            raise ModelfileError(f"invalid role {what!r}: {_ROLE_LIST}", line)
        return self.commands

    def _emit(self, name: str, role: str, value: str, line: int) -> None:
        self.commands.append(Command(name, f"{role}: {value}" if role else value, line))

    def _token(self, start: int) -> str:
        """The text from `start` to the next space or line break, for messages."""
        return re.match(r"[^ \t\r\n]*", self.text[start:]).group()

    def _bad_name_end(self, ch: str, start: int, line: int, word: list[str]) -> None:
        """An instruction name ended by something other than a space or tab."""
        keyword = "".join(word)
        if keyword.lower() in INSTRUCTIONS and (ch == "" or ch in _NEWLINE):
            raise ModelfileError(_missing_value(keyword.upper()), line)
        raise ModelfileError(f"unknown instruction {self._token(start)!r}: {_INSTRUCTION_LIST}", line)


def _missing_value(what: str) -> str:
    return f"{what} needs a value on the same line"


# --- writing ----------------------------------------------------------------------------


def _reads_back(candidate: str) -> str | None:
    """What the parser makes of `candidate` written as a value, if it reads as one whole."""
    reader = _ValueReader()
    for i, ch in enumerate(candidate + "\n"):
        value = reader.feed(ch)
        if value is not None:
            return value if i == len(candidate) else None
    return None


def _ollama_quote(value: str) -> str:
    # parser.go quote(): quote a value with a newline or edge spaces, with """ if it has a ".
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


def _quote(value: str, what: str, strict: bool) -> str:
    """Write a value so that it reads back the same, preferring Ollama's own spelling.

    Ollama's spelling fails for a value with edge tabs, a CR, a leading quote, or none at
    all (it writes "SYSTEM " and an editor that trims the line breaks it), so those get
    "..." or triple quotes. Characters the parser drops (see _is_print) cannot survive
    any spelling and are not held against one.
    """
    expected = _printable(value)
    ollama = _ollama_quote(value)
    for candidate in (ollama if value else '""', f'"{value}"', f'"""{value}"""'):
        if _reads_back(candidate) == expected:
            return candidate
    if strict:
        raise ModelfileError(
            f"{what} cannot be written in a Modelfile: a line of it ends with \"\"\" "
            f"(or \"), which would end the quoted value early"
        )
    return ollama


def _printable(value: str) -> str:
    return "".join(ch for ch in value if ch in _SPACE + _NEWLINE or _is_print(ch))
