"""The nodes of Go's text/template parse tree (Go's text/template/parse node kinds, their
fields and their String() forms), and Go's literal syntax they hold: quoted strings and
numbers. The parser (goparse.py) builds them; the executor (goexec.py) walks them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

# ---------------------------------------------------------------- nodes


@dataclass(eq=False)
class Node:
    """A parse-tree node; `pos` is its offset in the template text."""

    pos: int

    def copy(self) -> Node:
        """A deep copy of the subtree."""
        return copy.deepcopy(self)


@dataclass(eq=False)
class TextNode(Node):
    """Plain text, written as is."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(eq=False)
class CommentNode(Node):
    """A {{/* comment */}}."""

    text: str

    def __str__(self) -> str:
        return "{{" + self.text + "}}"


@dataclass(eq=False)
class ListNode(Node):
    """A sequence of nodes."""

    nodes: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


@dataclass(eq=False)
class DotNode(Node):
    """The cursor, `.`."""

    def __str__(self) -> str:
        return "."


@dataclass(eq=False)
class NilNode(Node):
    """The untyped `nil`."""

    def __str__(self) -> str:
        return "nil"


@dataclass(eq=False)
class BoolNode(Node):
    """`true` or `false`."""

    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(eq=False)
class NumberNode(Node):
    """A number or character literal with its Go ideal-constant value."""

    text: str
    value: int | float | complex

    def __str__(self) -> str:
        return self.text


@dataclass(eq=False)
class StringNode(Node):
    """A quoted or raw string literal."""

    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(eq=False)
class FieldNode(Node):
    """A field chain from dot: .A.B."""

    ident: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


@dataclass(eq=False)
class VariableNode(Node):
    """A variable, possibly with fields: $x.A."""

    ident: list[str]  # ["$x", "Field", ...]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass(eq=False)
class IdentifierNode(Node):
    """A function name."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False)
class ChainNode(Node):
    """Fields of a non-field term: (pipeline).A."""

    node: Node
    field: list[str]

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + f for f in self.field)


@dataclass(eq=False)
class CommandNode(Node):
    """One stage of a pipeline: an operand and its arguments."""

    args: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, PipeNode) else str(a) for a in self.args)


@dataclass(eq=False)
class PipeNode(Node):
    """A pipeline with its optional variable declarations."""

    is_assign: bool = False
    decl: list[VariableNode] = field(default_factory=list)
    cmds: list[CommandNode] = field(default_factory=list)

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass(eq=False)
class ActionNode(Node):
    """{{pipeline}}: evaluated and printed unless it declares variables."""

    pipe: PipeNode

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass(eq=False)
class BranchNode(Node):
    """What if, range and with share: a pipeline, a list and an optional else-list."""

    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None
    keyword = ""

    def __str__(self) -> str:
        s = "{{" + self.keyword + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            s += "{{else}}" + str(self.else_list)
        return s + "{{end}}"


@dataclass(eq=False)
class IfNode(BranchNode):
    """{{if}}."""

    keyword = "if"


@dataclass(eq=False)
class RangeNode(BranchNode):
    """{{range}}."""

    keyword = "range"


@dataclass(eq=False)
class WithNode(BranchNode):
    """{{with}}."""

    keyword = "with"


@dataclass(eq=False)
class BreakNode(Node):
    """{{break}} inside a range."""

    def __str__(self) -> str:
        return "{{break}}"


@dataclass(eq=False)
class ContinueNode(Node):
    """{{continue}} inside a range."""

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(eq=False)
class TemplateNode(Node):
    """{{template "name" pipeline}}."""

    name: str
    pipe: PipeNode | None

    def __str__(self) -> str:
        if self.pipe is None:
            return "{{template " + repr(self.name) + "}}"
        return "{{template " + repr(self.name) + " " + str(self.pipe) + "}}"


# ---------------------------------------------------------------- literals


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def go_unquote(quoted: str) -> str:
    """The value of a Go string, raw string or character literal (as strconv.Unquote)."""
    if quoted.startswith("`"):
        return quoted[1:-1].replace("\r", "")
    quote = quoted[0]
    body = quoted[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote:
            raise ValueError("unescaped quote")
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("trailing backslash")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e == quote:
            out += e.encode()
        elif e == "x":
            out.append(int(body[i : i + 2], 16)) if len(body[i : i + 2]) == 2 else _bad()
            i += 2
        elif e in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("bad octal escape")
            out.append(int(digits, 8))
            i += 2
        elif e in "uU":
            width = 4 if e == "u" else 8
            hexits = body[i : i + width]
            if len(hexits) != width:
                raise ValueError("short unicode escape")
            code = int(hexits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("invalid unicode code point")
            out += chr(code).encode("utf-8")
            i += width
        else:
            raise ValueError(f"unknown escape \\{e}")
    return out.decode("utf-8", errors="replace")


def _bad():
    raise ValueError("bad hex escape")


def parse_number(text: str) -> int | float | complex:
    """The ideal constant of a Go number or character literal, typed as Go's idealConstant does."""
    if text.startswith("'"):
        value = go_unquote(text)
        if len(value) != 1:
            raise ValueError("malformed character constant")
        return ord(value)
    if text.endswith("i"):
        # "2i", or "1+2i": the sign that splits real from imaginary is not an exponent's
        for k in range(len(text) - 2, 0, -1):
            if text[k] in "+-" and text[k - 1] not in "eEpP":
                return complex(float(parse_number(text[:k])), float(parse_number(text[k:-1])))
        return complex(0, float(parse_number(text[:-1])))
    body = text.lstrip("+-")
    neg = text.startswith("-")
    low = body.lower()
    is_hex = low.startswith("0x")
    if is_hex and "p" in low:
        mant = body.replace("_", "")
        value = float.fromhex(mant)
        return -value if neg else value
    if not is_hex and any(ch in body for ch in ".eE"):
        value = float(body.replace("_", ""))
        if value in (float("inf"),):
            raise ValueError("float overflow")
        return -value if neg else value
    clean = body.replace("_", "")
    if len(clean) > 1 and clean[0] == "0" and clean[1].isdigit():
        ivalue = int(clean, 8)  # Go's legacy octal: 0777
    else:
        ivalue = int(clean, 0)
    ivalue = -ivalue if neg else ivalue
    if not -(2**63) <= ivalue < 2**64:
        raise ValueError("integer overflow")
    return ivalue
