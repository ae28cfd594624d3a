"""Lexer for Go's text/template syntax (delimiters {{ and }}), token for token as Go's lex.go."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import TemplateError
from .gofmt import go_quote

LEFT_DELIM = "{{"
RIGHT_DELIM = "}}"
SPACE_CHARS = " \t\r\n"


class Tok(enum.Enum):
    """Token kinds, Go's lexer items."""

    ERROR = "error"
    BOOL = "bool"
    CHAR = "char"  # a printable ASCII punctuation character: ',' in "range $i, $v"
    CHAR_CONSTANT = "char constant"
    COMMENT = "comment"
    ASSIGN = "="
    DECLARE = ":="
    EOF = "EOF"
    FIELD = "field"
    IDENTIFIER = "identifier"
    LEFT_DELIM = "left delim"
    LEFT_PAREN = "("
    NUMBER = "number"
    PIPE = "|"
    RAW_STRING = "raw string"
    RIGHT_DELIM = "right delim"
    RIGHT_PAREN = ")"
    SPACE = "space"
    STRING = "string"
    TEXT = "text"
    VARIABLE = "variable"
    DOT = "."
    # keywords
    BLOCK = "block"
    BREAK = "break"
    CONTINUE = "continue"
    DEFINE = "define"
    ELSE = "else"
    END = "end"
    IF = "if"
    NIL = "nil"
    RANGE = "range"
    TEMPLATE = "template"
    WITH = "with"


KEYWORDS = {
    "block": Tok.BLOCK,
    "break": Tok.BREAK,
    "continue": Tok.CONTINUE,
    "define": Tok.DEFINE,
    "else": Tok.ELSE,
    "end": Tok.END,
    "if": Tok.IF,
    "nil": Tok.NIL,
    "range": Tok.RANGE,
    "template": Tok.TEMPLATE,
    "with": Tok.WITH,
}


@dataclass
class Token:
    """One lexed token: kind, source text, offset and line."""

    typ: Tok
    val: str
    pos: int  # offset in the source text
    line: int

    def __str__(self) -> str:
        """The token as Go's parse errors name it."""
        if self.typ is Tok.EOF:
            return "EOF"
        if self.typ is Tok.ERROR:
            return self.val
        if self.typ in KEYWORDS.values():
            return f"<{self.val}>"
        if len(self.val) > 10:
            return go_quote(self.val[:10]) + "..."
        return go_quote(self.val)


# Go's number syntax, loosely: the parser validates the value afterwards.
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[bB][01_]+|0[oO][0-7_]+"
    r"|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]+)?)i?"
)


def _is_space(c: str) -> bool:
    return c != "" and c in SPACE_CHARS


def _is_alnum(c: str) -> bool:
    return c != "" and (c == "_" or c.isalnum())


def _has_left_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and s[i] == "-" and _is_space(s[i + 1])


def _has_right_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and _is_space(s[i]) and s[i + 1] == "-"


class Lexer:
    """Turns template text into tokens; trim markers are applied here, as in Go."""

    def __init__(self, text: str, name: str):
        self.text = text
        self.name = name
        self.tokens: list[Token] = []
        self.paren_depth = 0
        self._line_pos, self._line = 0, 1  # the line at _line_pos: tokens come in order, count on from there

    def line_at(self, pos: int) -> int:
        if pos < self._line_pos:
            return self.text.count("\n", 0, pos) + 1
        self._line += self.text.count("\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line

    def error(self, msg: str, pos: int) -> TemplateError:
        return template_error(self.text, self.name, msg, pos)

    def emit(self, typ: Tok, start: int, end: int) -> None:
        self.tokens.append(Token(typ, self.text[start:end], start, self.line_at(start)))

    def run(self) -> list[Token]:
        s = self.text
        pos = 0
        n = len(s)
        while True:
            # text up to the next left delimiter
            i = s.find(LEFT_DELIM, pos)
            if i < 0:
                if pos < n:
                    self.emit(Tok.TEXT, pos, n)
                self.tokens.append(Token(Tok.EOF, "", n, self.line_at(n)))
                return self.tokens
            text_end = i
            trim_left = _has_left_trim(s, i + len(LEFT_DELIM))
            if trim_left:
                while text_end > pos and s[text_end - 1] in SPACE_CHARS:
                    text_end -= 1
            if text_end > pos:
                self.emit(Tok.TEXT, pos, text_end)
            pos = self._action(i, trim_left)

    def _at_right_delim(self, pos: int) -> tuple[bool, bool]:
        s = self.text
        if _has_right_trim(s, pos) and s.startswith(RIGHT_DELIM, pos + 2):
            return True, True
        if s.startswith(RIGHT_DELIM, pos):
            return True, False
        return False, False

    def _skip_after_right(self, pos: int, trim: bool) -> int:
        """Position after the right delimiter (and the whitespace a trim marker eats)."""
        pos += (2 if trim else 0) + len(RIGHT_DELIM)
        if trim:
            while pos < len(self.text) and self.text[pos] in SPACE_CHARS:
                pos += 1
        return pos

    def _action(self, start: int, trim_left: bool) -> int:
        s = self.text
        pos = start + len(LEFT_DELIM) + (2 if trim_left else 0)
        if s.startswith("/*", pos):
            end = s.find("*/", pos + 2)
            if end < 0:
                raise self.error("unclosed comment", start)
            at, trim = self._at_right_delim(end + 2)
            if not at:
                raise self.error("comment ends before closing delimiter", end)
            self.emit(Tok.COMMENT, pos, end + 2)
            return self._skip_after_right(end + 2, trim)
        self.emit(Tok.LEFT_DELIM, start, start + len(LEFT_DELIM))
        self.paren_depth = 0
        n = len(s)
        while True:
            at, trim = self._at_right_delim(pos)
            if at:
                if self.paren_depth:
                    raise self.error("unclosed left paren", pos)
                end = pos + (2 if trim else 0)
                self.emit(Tok.RIGHT_DELIM, end, end + len(RIGHT_DELIM))
                return self._skip_after_right(pos, trim)
            if pos >= n:
                raise self.error("unclosed action", pos)
            c = s[pos]
            if _is_space(c):
                j = pos
                # the last space of a run may belong to a trim marker " -}}"
                while j < n and _is_space(s[j]) and not self._at_right_delim(j)[1]:
                    j += 1
                self.emit(Tok.SPACE, pos, j)
                pos = j
            elif c == "=":
                self.emit(Tok.ASSIGN, pos, pos + 1)
                pos += 1
            elif c == ":":
                if not s.startswith(":=", pos):
                    raise self.error("expected :=", pos)
                self.emit(Tok.DECLARE, pos, pos + 2)
                pos += 2
            elif c == "|":
                self.emit(Tok.PIPE, pos, pos + 1)
                pos += 1
            elif c == '"':
                pos = self._quote(pos, '"', Tok.STRING, "unterminated quoted string")
            elif c == "`":
                end = s.find("`", pos + 1)
                if end < 0:
                    raise self.error("unterminated raw quoted string", pos)
                self.emit(Tok.RAW_STRING, pos, end + 1)
                pos = end + 1
            elif c == "'":
                pos = self._quote(pos, "'", Tok.CHAR_CONSTANT, "unterminated character constant")
            elif c == "$":
                pos = self._field_or_variable(pos, Tok.VARIABLE)
            elif c == ".":
                if pos + 1 < n and s[pos + 1].isdigit():
                    pos = self._number(pos)
                else:
                    pos = self._field_or_variable(pos, Tok.FIELD)
            elif c in "+-" or c.isdigit():
                pos = self._number(pos)
            elif _is_alnum(c):
                j = pos
                while j < n and _is_alnum(s[j]):
                    j += 1
                word = s[pos:j]
                self._check_terminator(j)
                if word in KEYWORDS:
                    self.emit(KEYWORDS[word], pos, j)
                elif word in ("true", "false"):
                    self.emit(Tok.BOOL, pos, j)
                else:
                    self.emit(Tok.IDENTIFIER, pos, j)
                pos = j
            elif c == "(":
                self.emit(Tok.LEFT_PAREN, pos, pos + 1)
                self.paren_depth += 1
                pos += 1
            elif c == ")":
                self.paren_depth -= 1
                if self.paren_depth < 0:
                    raise self.error("unexpected right paren", pos)
                self.emit(Tok.RIGHT_PAREN, pos, pos + 1)
                pos += 1
            elif c.isascii() and c.isprintable():
                self.emit(Tok.CHAR, pos, pos + 1)
                pos += 1
            else:
                raise self.error(f"unrecognized character in action: {_go_rune(c)}", pos)

    def _quote(self, pos: int, quote: str, typ: Tok, unterminated: str) -> int:
        s = self.text
        j = pos + 1
        while True:
            if j >= len(s) or s[j] == "\n":
                raise self.error(unterminated, pos)
            if s[j] == "\\":
                j += 2
                continue
            if s[j] == quote:
                break
            j += 1
        self.emit(typ, pos, j + 1)
        return j + 1

    def _field_or_variable(self, pos: int, typ: Tok) -> int:
        s = self.text
        j = pos + 1
        while j < len(s) and _is_alnum(s[j]):
            j += 1
        if typ is Tok.FIELD and j == pos + 1:
            # a lone "." is dot itself
            self._check_terminator(j)
            self.emit(Tok.DOT, pos, j)
            return j
        self._check_terminator(j)
        self.emit(typ, pos, j)
        return j

    def _check_terminator(self, j: int) -> None:
        s = self.text
        if j >= len(s):
            return
        c = s[j]
        if _is_space(c) or c in ".,|:()" or s.startswith(RIGHT_DELIM, j):
            return
        raise self.error(f"bad character {_go_rune(c)}", j)

    def _number(self, pos: int) -> int:
        m = _NUMBER.match(self.text, pos)
        end = m.end() if m else pos
        if end < len(self.text) and self.text[end] in "+-" and end > pos and self.text[end - 1] != "i":
            # A complex constant: 1+2i, no spaces, the second part ending in i.
            imag = _NUMBER.match(self.text, end)
            if imag is None or not imag.group().endswith("i") or not any(ch.isdigit() for ch in imag.group()):
                raise self.error(f"bad number syntax: {self.text[pos:imag.end() if imag else end + 1]!r}", pos)
            end = imag.end()
        has_digit = any(ch.isdigit() for ch in self.text[pos:end])
        if not has_digit or (end < len(self.text) and _is_alnum(self.text[end])):
            bad_end = end
            while bad_end < len(self.text) and _is_alnum(self.text[bad_end]):
                bad_end += 1
            raise self.error(f"bad number syntax: {self.text[pos:max(bad_end, pos + 1)]!r}", pos)
        self.emit(Tok.NUMBER, pos, end)
        return end


def _go_rune(c: str) -> str:
    """A character as Go's %#U prints it: U+0041 'A'."""
    code = ord(c)
    if c.isprintable():
        return f"U+{code:04X} '{c}'"
    return f"U+{code:04X}"


def template_error(text: str, name: str, msg: str, pos: int) -> TemplateError:
    """A TemplateError at offset `pos` of `text`, with Go's line and byte column."""
    line = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    col = len(text[line_start:pos].encode("utf-8"))
    return TemplateError(msg, name=name, line=line, col=col)


def lex(text: str, name: str = "") -> list[Token]:
    """Tokens of `text`, ending with an EOF token; raises TemplateError on a lexical error."""
    return Lexer(text, name).run()
