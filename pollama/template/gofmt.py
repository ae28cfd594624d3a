"""Go's printing of template values: fmt's %v and the printf verbs, and encoding/json.

Python values stand for Go values: str, bool, int, float, None (nil), list/tuple (slice),
dict (map, printed and marshalled with sorted keys), dataclass (struct). Two hooks let a
value act like a Go type with methods: `go_string()` (a fmt.Stringer) and `go_json()`
(a json.Marshaler: returns the Python value to marshal instead). An `OrderedMap` is a map
that marshals in insertion order (Ollama's ordered tool properties).
"""

from __future__ import annotations

import dataclasses
import math
import re
from decimal import Decimal
from typing import Sequence


class OrderedMap(dict):
    """A map whose JSON keeps insertion order, as Ollama's ordered maps marshal."""


class GoValueError(Exception):
    """A value Go's fmt or json cannot handle (the caller adds the template position)."""


# The Go type a Python value stands for: (Python types, Go's type name, its reflect.Kind),
# tested in order (bool before int: a bool is an int in Python).
GO_TYPES = (
    (bool, "bool", "bool"),
    (int, "int", "int"),
    (float, "float64", "float"),
    (complex, "complex128", "complex"),
    (str, "string", "string"),
    ((list, tuple), "[]interface {}", "slice"),
    (dict, "map[string]interface {}", "map"),
)


def go_type_name(v) -> str:
    """Go's name for the type a Python value stands for, as error messages print it."""
    if v is None:
        return "<nil>"
    for types, name, _ in GO_TYPES:
        if isinstance(v, types):
            return name
    return type(v).__name__


def is_struct(v) -> bool:
    """Whether a value stands for a Go struct (a dataclass instance)."""
    return dataclasses.is_dataclass(v) and not isinstance(v, type)


# ---------------------------------------------------------------- floats


def _shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-tripping decimal digits of |x| and the decimal point position."""
    d = Decimal(repr(abs(x)))
    _, digits, exp = d.normalize().as_tuple()
    ds = "".join(map(str, digits)) or "0"
    if ds == "0":
        return "0", 1
    return ds, exp + len(ds)


def _fmt_e(neg: bool, digits: str, dp: int, upper: bool = False) -> str:
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = dp - 1
    sign = "-" if exp < 0 else "+"
    e = "E" if upper else "e"
    return ("-" if neg else "") + f"{mant}{e}{sign}{abs(exp):02d}"


def _fmt_f(neg: bool, digits: str, dp: int) -> str:
    if dp <= 0:
        s = "0." + "0" * (-dp) + digits
    elif dp >= len(digits):
        s = digits + "0" * (dp - len(digits))
    else:
        s = digits[:dp] + "." + digits[dp:]
    return ("-" if neg else "") + s


def _special_float(x: float) -> str | None:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return None


def go_float_g(x: float, upper: bool = False) -> str:
    """strconv.FormatFloat(x, 'g', -1, 64): Go's %v for floats."""
    special = _special_float(x)
    if special:
        return special
    neg = math.copysign(1.0, x) < 0
    if x == 0:
        return "-0" if neg else "0"
    digits, dp = _shortest_digits(x)
    exp = dp - 1
    # With the shortest digits Go switches to %e from exponent 6 on (strconv's eprec).
    if exp < -4 or exp >= 6:
        return _fmt_e(neg, digits, dp, upper)
    return _fmt_f(neg, digits, dp)


def go_json_float(x: float) -> str:
    """encoding/json's rendering of a float64."""
    if _special_float(x):
        raise GoValueError(f"json: unsupported value: {_special_float(x)}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    neg = x < 0
    digits, dp = _shortest_digits(x)
    a = abs(x)
    if a < 1e-6 or a >= 1e21:
        s = _fmt_e(neg, digits, dp)
        return re.sub(r"e([+-])0(\d)$", r"e\1\2", s)
    return _fmt_f(neg, digits, dp)


# ---------------------------------------------------------------- quoting


_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _is_go_print(c: str) -> bool:
    return c == " " or (c.isprintable() and not c.isspace())


def go_quote(s: str, quote: str = '"') -> str:
    """strconv.Quote (or QuoteRune with quote="'")."""
    out = [quote]
    for c in s:
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif _is_go_print(c):
            out.append(c)
        elif c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        else:
            o = ord(c)
            if o < 0x20 or o == 0x7F:
                out.append(f"\\x{o:02x}")
            elif 0xD800 <= o <= 0xDFFF:
                out.append("\\ufffd")
            elif o < 0x10000:
                out.append(f"\\u{o:04x}")
            else:
                out.append(f"\\U{o:08x}")
    out.append(quote)
    return "".join(out)


# ---------------------------------------------------------------- %v


def format_value(v, verb: str = "v", plus: bool = False, depth: int = 0) -> str:
    """fmt's rendering of one value with %v (or %s/%d... applied element-wise, as Go does)."""
    hook = getattr(v, "go_string", None)
    if hook is not None and verb in "vsxXq" and not isinstance(v, type):
        return _fmt_scalar(hook(), verb)
    if v is None:
        return "<nil>" if verb == "v" else f"%!{verb}(<nil>)"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(format_value(e, verb, plus, depth + 1) for e in v) + "]"
    if isinstance(v, dict):
        items = sorted_items(v)
        return "map[" + " ".join(
            f"{format_value(k, verb, plus, depth + 1)}:{format_value(x, verb, plus, depth + 1)}" for k, x in items
        ) + "]"
    if is_struct(v):
        parts = []
        for f in dataclasses.fields(v):
            text = format_value(getattr(v, f.name), verb, plus, depth + 1)
            parts.append(f"{f.name}:{text}" if plus else text)
        return "{" + " ".join(parts) + "}"
    return _fmt_scalar(v, verb)


def _fmt_scalar(v, verb: str) -> str:
    if isinstance(v, bool):
        if verb in "vt":
            return "true" if v else "false"
        return _bad_verb(verb, v)
    if isinstance(v, int):
        if verb in "vd":
            return str(v)
        if verb == "x":
            return format(v, "x")
        if verb == "X":
            return format(v, "X")
        if verb == "o":
            return format(v, "o")
        if verb == "O":
            return ("-0o" if v < 0 else "0o") + format(abs(v), "o")
        if verb == "b":
            return format(v, "b")
        if verb == "c":
            return chr(v) if 0 <= v <= 0x10FFFF else "\ufffd"
        if verb == "q":
            return go_quote(chr(v) if 0 <= v <= 0x10FFFF else "\ufffd", "'")
        if verb == "U":
            return f"U+{v:04X}"
        return _bad_verb(verb, v)
    if isinstance(v, float):
        if verb in "vg":
            return go_float_g(v)
        if verb == "G":
            return go_float_g(v, upper=True)
        if verb in "fF":
            return _special_float(v) or f"{v:.6f}"
        if verb in "eE":
            return _special_float(v) or (f"{v:.6e}" if verb == "e" else f"{v:.6E}")
        return _bad_verb(verb, v)
    if isinstance(v, complex):
        if verb in "vg":
            return f"({go_float_g(v.real)}{'+' if v.imag >= 0 or math.isnan(v.imag) else ''}{go_float_g(v.imag)}i)"
        return _bad_verb(verb, v)
    if isinstance(v, str):
        if verb in "vs":
            return v
        if verb == "q":
            return go_quote(v)
        if verb == "x":
            return v.encode("utf-8").hex()
        if verb == "X":
            return v.encode("utf-8").hex().upper()
        return _bad_verb(verb, v)
    return f"%!{verb}({type(v).__name__})"


def _bad_verb(verb: str, v) -> str:
    return f"%!{verb}({go_type_name(v)}={format_value(v)})"


def sorted_items(d: dict) -> list:
    """Items of a map in Go's fmtsort order (numbers numerically, strings bytewise)."""
    try:
        return sorted(d.items(), key=lambda kv: _sort_key(kv[0]))
    except TypeError:
        return sorted(d.items(), key=lambda kv: (go_type_name(kv[0]), str(kv[0])))


def _sort_key(k):
    if isinstance(k, bool):
        return (0, int(k))
    if isinstance(k, (int, float)):
        return (1, k)
    if isinstance(k, str):
        return (2, k)
    return (3, str(k))


# ---------------------------------------------------------------- Sprint / Sprintf


def sprint(args: list) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out = []
    prev_string = True
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(format_value(a))
        prev_string = is_string
    return "".join(out)


def sprintln(args: list) -> str:
    """fmt.Sprintln: operands always separated by spaces, then a newline."""
    return " ".join(format_value(a) for a in args) + "\n"


_SPEC = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d+)?)?(.?)", re.DOTALL)


def sprintf(fmt: str, args: list) -> str:
    """fmt.Sprintf for the verbs templates use, with Go's %!verb(...) error notation."""
    out = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _SPEC.match(fmt, j)
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        has_prec = "." in fmt[j : m.end()] and fmt[j : m.end()].rfind(".") > 0
        i = m.end()
        if (width not in (None, "*") and _too_long(width)) or (prec not in (None, "*") and _too_long(prec)):
            # Go's parsenum gives up on a crazy long number and the rest of the format is lost.
            out.append("%!(NOVERB)")
            break
        if width == "*":
            width, argi = _int_from_arg(args, argi)
            if width is None:
                out.append("%!(BADWIDTH)")
            elif width < 0:
                flags, width = flags + "-", -width
        if prec == "*":
            prec, argi = _int_from_arg(args, argi)
            if prec is None:
                out.append("%!(BADPREC)")
            elif prec < 0:
                prec = None
        width = int(width) if width is not None else None
        prec = int(prec) if prec is not None else (0 if has_prec and m.group(3) is None else None)
        if verb == "":
            out.append("%!(NOVERB)")
            break
        if verb == "%":
            out.append("%")
            continue
        if verb == "T" and argi < len(args):
            out.append(_pad(go_type_name(args[argi]), "-" in flags, False, width))
            argi += 1
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_format_one(arg, verb, flags, width, prec))
    if argi < len(args):
        extra = ", ".join(
            f"{go_type_name(a)}={format_value(a)}" if a is not None else "<nil>" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


_MAX_WIDTH = 1_000_000  # Go's fmt refuses widths and precisions beyond this


def _int_from_arg(args: Sequence, argi: int) -> tuple[int | None, int]:
    """The argument a `*` width or precision takes, and the next argument's index (Go's
    intFromArg): None where it is missing, not an integer or beyond _MAX_WIDTH."""
    value = args[argi] if argi < len(args) else None
    if not _is_int(value) or abs(value) > _MAX_WIDTH:
        return None, argi + 1
    return value, argi + 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _too_long(digits: str) -> bool:
    """Whether Go's parsenum overflows on these digits (it checks before adding each one)."""
    num = 0
    for d in digits:
        if num > _MAX_WIDTH:
            return True
        num = num * 10 + int(d)
    return False


def _format_one(arg, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    minus, plus, zero, space, sharp = ("-" in flags), ("+" in flags), ("0" in flags), (" " in flags), ("#" in flags)
    if getattr(arg, "go_string", None) is not None and verb in "vsxXq":
        arg = arg.go_string()
    if isinstance(arg, float) and not _special_float(arg) and verb in "eEfFgG" and prec is not None:
        body = format(arg, f".{prec}{verb}") if verb not in "gG" else _go_g_prec(arg, prec, verb)
    elif isinstance(arg, str) and verb in "sv" and prec is not None:
        body = arg[:prec]
    elif isinstance(arg, str) and verb in "xX" and space:
        body = " ".join(format(b, "02x" if verb == "x" else "02X") for b in arg.encode("utf-8"))
    elif isinstance(arg, str) and verb == "q" and sharp and "`" not in arg and all(_is_go_print(c) for c in arg):
        body = "`" + arg + "`"
    elif isinstance(arg, int) and not isinstance(arg, bool) and verb in "xXob" and sharp:
        body = format_value(arg, verb)
        prefix = {"x": "0x", "X": "0X", "o": "0", "b": ""}[verb]
        body = ("-" + prefix + body[1:]) if body.startswith("-") else prefix + body
    elif is_struct(arg) and verb == "v" and plus:
        body = format_value(arg, "v", plus=True)
    else:
        body = format_value(arg, verb)
    numeric = isinstance(arg, (int, float)) and not isinstance(arg, bool) and not body.startswith("%!")
    if numeric and not body.startswith("-") and body != "NaN":
        if plus:
            body = "+" + body
        elif space:
            body = " " + body
    return _pad(body, minus, zero and (numeric or isinstance(arg, str)), width, numeric)


def _pad(body: str, minus: bool, zero: bool, width: int | None, numeric: bool = False) -> str:
    if width is None or len(body) >= width:
        return body
    pad = width - len(body)
    if minus:
        return body + " " * pad
    if zero:
        sign = body[0] if numeric and body[:1] in "+- " else ""
        return sign + "0" * pad + body[len(sign):]
    return " " * pad + body


def _go_g_prec(x: float, prec: int, verb: str) -> str:
    # Go's %.Ng agrees with Python's for the finite values printf sees (precision 0 means 1).
    return format(x, f".{max(prec, 1)}{verb}")


# ---------------------------------------------------------------- JSON


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
                 "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json_string(s: str) -> str:
    """encoding/json's quoting of a string (HTML-safe, as json.Marshal escapes)."""
    out = ['"']
    for c in s:
        e = _JSON_ESCAPES.get(c)
        if e is not None:
            out.append(e)
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def go_json(v) -> str:
    """json.Marshal: compact, HTML-escaped, map keys sorted (OrderedMap keeps its order)."""
    out: list[str] = []
    _marshal(v, out, 0)
    return "".join(out)


def _marshal(v, out: list[str], depth: int) -> None:
    if depth > 1000:
        raise GoValueError("json: unsupported value: encountered a cycle")
    hook = getattr(v, "go_json", None)
    if hook is not None and not isinstance(v, type):
        v = hook()
        if isinstance(v, RawJSON):
            out.append(v.text)
            return
    if v is None:
        out.append("null")
    elif isinstance(v, bool):
        out.append("true" if v else "false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        out.append(go_json_float(v))
    elif isinstance(v, str):
        out.append(go_json_string(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, e in enumerate(v):
            if i:
                out.append(",")
            _marshal(e, out, depth + 1)
        out.append("]")
    elif isinstance(v, dict):
        items = list(v.items()) if isinstance(v, OrderedMap) else sorted(v.items(), key=lambda kv: str(kv[0]))
        out.append("{")
        for i, (k, e) in enumerate(items):
            if i:
                out.append(",")
            out.append(go_json_string(k if isinstance(k, str) else format_value(k)))
            out.append(":")
            _marshal(e, out, depth + 1)
        out.append("}")
    elif is_struct(v):
        # a struct without json tags: exported field names, declaration order
        out.append("{")
        for i, f in enumerate(dataclasses.fields(v)):
            if i:
                out.append(",")
            out.append(go_json_string(f.name) + ":")
            _marshal(getattr(v, f.name), out, depth + 1)
        out.append("}")
    elif isinstance(v, complex):
        raise GoValueError("json: unsupported type: complex128")
    else:
        raise GoValueError(f"json: unsupported type: {type(v).__name__}")


class RawJSON:
    """Already-encoded JSON returned by a go_json hook."""

    def __init__(self, text: str):
        self.text = text
