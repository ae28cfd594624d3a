"""The functions Go templates call: Go's builtins (eq, index, slice, printf, ...) and Ollama's
(json, currentDate, toTypeScriptType, ...), with Go's values they work on: the typed nil
(NIL) and Go's truth.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from collections.abc import Callable

from .gofmt import GO_TYPES, GoValueError, format_value, go_json, go_type_name, sprint, sprintf, sprintln

class _Nil:
    """A nil interface value held by a map, struct field or slice element."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NIL"

    def __bool__(self) -> bool:
        return False


NIL = _Nil()


def _plain(v):
    return None if v is NIL else v


def _held(v):
    """A value as read out of a container: nil becomes a (typed) nil interface."""
    return NIL if v is None else v


class _CallError(Exception):
    """An error from a template function; the executor wraps it as Go's 'error calling'."""


def is_true(v) -> bool:
    """Go's truth of a template value: the zero value of its type and empty collections are false."""
    v = _plain(v)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, complex)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    truth = getattr(v, "go_truth", None)
    if truth is not None:
        return bool(truth())
    return True  # structs and pointers to them are always true


# ---------------------------------------------------------------- builtin functions


def _kind(v) -> str:
    v = _plain(v)
    if v is None:
        return "invalid"
    for types, _, kind in GO_TYPES:
        if isinstance(v, types):
            return kind
    return "struct"


_BASIC = {"bool", "int", "float", "complex", "string"}


def _eq(arg1, *rest):
    if not rest:
        raise _CallError("missing argument for comparison")
    a = _plain(arg1)
    k1 = _kind(a)
    for arg in rest:
        b = _plain(arg)
        k2 = _kind(b)
        if k1 != k2:
            if (k1 in _BASIC or k2 in _BASIC) and a is not None and b is not None:
                raise _CallError(f"incompatible types for comparison: {go_type_name(a)} and {go_type_name(b)}")
            truth = False
            if a is None or b is None:
                truth = a is None and b is None
            elif k1 not in _BASIC and k2 not in _BASIC:
                raise _CallError(f"non-comparable types {format_value(a)}: {go_type_name(a)}, "
                                 f"{go_type_name(b)}: {format_value(b)}")
        elif k1 in _BASIC:
            truth = a == b
        elif k1 == "invalid":
            truth = True
        else:
            if k1 in ("slice", "map"):
                raise _CallError(f"non-comparable type {format_value(b)}: {go_type_name(b)}")
            truth = a == b
        if truth:
            return True
    return False


def _ne(a, b):
    return not _eq(a, b)


def _lt(a, b):
    a, b = _plain(a), _plain(b)
    k1, k2 = _kind(a), _kind(b)
    if k1 not in _BASIC or k2 not in _BASIC:
        raise _CallError("invalid type for comparison")
    if k1 != k2:
        raise _CallError(f"incompatible types for comparison: {go_type_name(a)} and {go_type_name(b)}")
    if k1 in ("bool", "complex"):
        raise _CallError("invalid type for comparison")
    return a < b


def _le(a, b):
    return _lt(a, b) or _eq(a, b)


def _gt(a, b):
    return not _le(a, b)


def _ge(a, b):
    return not _lt(a, b)


def _not(a):
    return not is_true(a)


def _len(item):
    item = _plain(item)
    if item is None:
        raise _CallError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8"))  # Go strings are measured in bytes
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    raise _CallError(f"len of type {go_type_name(item)}")


def _index_arg(index, cap: int) -> int:
    index = _plain(index)
    if index is None:
        raise _CallError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _CallError(f"cannot index slice/array with type {go_type_name(index)}")
    if index < 0 or index > cap:
        raise _CallError(f"index out of range: {index}")
    return index


def _index(item, *indexes):
    item = _plain(item)
    if item is None:
        raise _CallError("index of untyped nil")
    for index in indexes:
        index = _plain(index)
        if item is None or item is NIL:
            raise _CallError("index of nil pointer")
        if isinstance(item, (list, tuple, str)):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x == len(seq):
                raise _CallError(f"index out of range: {x}")
            item = seq[x]
            item = _held(item)
        elif isinstance(item, dict):
            # Template maps are Go map[string]any unless their keys say otherwise.
            key_type = go_type_name(next(iter(item))) if item else "string"
            if index is None:
                raise _CallError(f"value is nil; should be of type {key_type}")
            if go_type_name(index) != key_type:
                raise _CallError(f"value has type {go_type_name(index)}; should be {key_type}")
            item = _held(item.get(index))
        else:
            raise _CallError(f"can't index item of type {go_type_name(item)}")
    return item


def _slice(item, *indexes):
    item = _plain(item)
    if item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _CallError("cannot 3-index slice a string")
        seq = item.encode("utf-8")
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise _CallError(f"can't slice item of type {go_type_name(item)}")
    idx = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(seq))
    if idx[0] > idx[1]:
        raise _CallError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _CallError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = seq[idx[0] : idx[1]]
    return out.decode("utf-8", errors="replace") if isinstance(item, str) else list(out)


def _eval_args(args) -> str:
    args = [_plain(a) for a in args]
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(args)


def _html(*args):
    s = _eval_args(args)
    return (s.replace("\0", "\ufffd").replace("&", "&amp;").replace("'", "&#39;").replace('"', "&#34;")
            .replace("<", "&lt;").replace(">", "&gt;"))


_JS_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _js(*args):
    out = []
    for c in _eval_args(args):
        if c in _JS_ESCAPES:
            out.append(_JS_ESCAPES[c])
        elif ord(c) < 0x20:
            out.append(f"\\u00{ord(c):02X}")
        elif ord(c) >= 0x80 and not c.isprintable():
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _urlquery(*args):
    return urllib.parse.quote_plus(_eval_args(args), safe="-_.~")


def _print(*args):
    return sprint([_plain(a) for a in args])


def _println(*args):
    return sprintln([_plain(a) for a in args])


def _printf(fmt, *args):
    return sprintf(fmt, [_plain(a) for a in args])


def _call(fn, *args):
    fn = _plain(fn)
    if fn is None:
        raise _CallError("call of nil")
    raise _CallError(f"non-function of type {go_type_name(fn)}")


@dataclasses.dataclass(frozen=True)
class Func:
    """A template function: its Python body and Go's parameter shape."""

    fn: Callable
    fixed: int  # number of fixed parameters
    variadic: bool = False
    string_params: bool = False  # every parameter is a Go string


BUILTINS: dict[str, Func] = {
    "and": Func(None, 1, True),  # evaluated lazily by the executor
    "or": Func(None, 1, True),
    "call": Func(_call, 1, True),
    "eq": Func(_eq, 1, True),
    "ge": Func(_ge, 2),
    "gt": Func(_gt, 2),
    "html": Func(_html, 0, True),
    "index": Func(_index, 1, True),
    "js": Func(_js, 0, True),
    "le": Func(_le, 2),
    "len": Func(_len, 1),
    "lt": Func(_lt, 2),
    "ne": Func(_ne, 2),
    "not": Func(_not, 1),
    "print": Func(_print, 0, True),
    "printf": Func(_printf, 1, True),
    "println": Func(_println, 0, True),
    "slice": Func(_slice, 1, True),
    "urlquery": Func(_urlquery, 0, True),
}


# ---------------------------------------------------------------- Ollama's functions


def _ollama_json(v):
    try:
        return go_json(_plain(v))
    except GoValueError:
        return ""  # Ollama ignores json.Marshal's error and prints nothing


def _current_date(*_fmt):
    return datetime.date.today().strftime("%Y-%m-%d")


def _yesterday_date(*_fmt):
    return (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


def _to_typescript_type(v):
    convert = getattr(_plain(v), "to_typescript_type", None)
    return convert() if convert is not None else "any"


OLLAMA_FUNCS: dict[str, Func] = {
    "json": Func(_ollama_json, 1),
    "currentDate": Func(_current_date, 0, True, string_params=True),
    "yesterdayDate": Func(_yesterday_date, 0, True, string_params=True),
    "toTypeScriptType": Func(_to_typescript_type, 1),
}
