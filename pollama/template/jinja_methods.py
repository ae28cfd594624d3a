"""The Python methods a chat template may call on strings, bytes, lists and dicts
(`'x'.join(...)`, `s.replace(...)`, `s.split()`), each checked against the size limits
(jinja_bounds.py) before it builds its result; the sandbox's call() looks them up here.
"""

from __future__ import annotations

from markupsafe import Markup

from .jinja_bounds import (
    MAX_RENDER_CHARS,
    _check_chars,
    _check_width,
    _escaped_len,
    _lines,
    _materialized,
    _need,
    _need_items,
    _replace_size,
    _text,
    _tick,
    _too_long,
)


# ---- methods called from a template


def _m_width(s, width=0, *args):
    _check_width(width)


def _m_expandtabs(s, tabsize=8):
    if isinstance(tabsize, int) and tabsize > 0:
        _check_chars(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * tabsize)


def _m_join(s, iterable):
    items = _materialized(iterable)
    escaping = 5 if isinstance(s, Markup) else 1
    total = 0
    for n, item in enumerate(items):
        total += len(s) + (len(item) * (1 if hasattr(item, "__html__") else escaping)
                           if isinstance(item, (str, bytes)) else 0)
        _tick(n + 1)
        if total > MAX_RENDER_CHARS:
            _too_long(total)
    return (items,)


def _m_replace(s, old, new, count=-1):
    if isinstance(old, type(s)) and isinstance(new, type(s)) or isinstance(s, Markup) and isinstance(new, str):
        _check_chars(_replace_size(s, old, len(new) * (5 if isinstance(s, Markup) else 1), count))


def _m_translate(s, table):
    if isinstance(s, str) and isinstance(table, (dict, list, tuple)):
        values = table.values() if isinstance(table, dict) else table
        longest = max((len(v) for v in values if isinstance(v, str)), default=1)
        _check_chars(len(s) * max(longest, 1))


def _m_encode(s, encoding="utf-8", errors="strict"):
    # UTF-8, -16 and -32 write 4 bytes a character at most; escaping codecs 10.
    utf = isinstance(encoding, str) and encoding.lower().replace("-", "").replace("_", "").startswith("utf")
    _check_chars(len(s) * (4 if utf else 10) + 4)


def _m_decode(b, encoding="utf-8", errors="strict"):
    _check_chars(len(b) * 4)  # backslashreplace: \xNN


def _m_hex(b, sep="", bytes_per_sep=1):
    _check_chars(len(b) * (2 + (len(sep) if isinstance(sep, (str, bytes)) else 1)))


def _m_split(s, sep=None, maxsplit=-1):
    if sep and isinstance(sep, (str, bytes)) and isinstance(sep, str) == isinstance(s, str):
        parts = s.count(sep) + 1
    else:
        parts = len(s) // 2 + 1
    if isinstance(maxsplit, int) and maxsplit >= 0:
        parts = min(parts, maxsplit + 1)
    _need(64 * parts)


def _m_splitlines(s, keepends=False):
    _need(64 * _lines(s))


def _m_parts(s, *args, **kwargs):
    _need(32 * (len(s) + 1))  # Markup.striptags splits on whitespace


def _m_escape(cls, s):
    _check_chars(_escaped_len(_text(s)))


def _m_to_bytes(n, length=1, *args, **kwargs):
    _check_width(length)


def _m_fromkeys(cls, iterable, value=None):
    items = _materialized(iterable)
    _need_items(items, 100)
    return (items, value)


def _m_upper(s, *args):
    _need(4 * len(s))  # a case mapping writes 3 characters for one at most


# Checks of str/bytes (and Markup) methods called from a template, by name, on the receiver and
# arguments; those returning a tuple replace the arguments (an iterator's items, collected once).
_METHOD_CHECKS = {
    "capitalize": _m_upper,
    "casefold": _m_upper,
    "center": _m_width,
    "decode": _m_decode,
    "encode": _m_encode,
    "escape": _m_escape,
    "expandtabs": _m_expandtabs,
    "fromkeys": _m_fromkeys,
    "hex": _m_hex,
    "join": _m_join,
    "ljust": _m_width,
    "lower": _m_upper,
    "replace": _m_replace,
    "rjust": _m_width,
    "rsplit": _m_split,
    "split": _m_split,
    "splitlines": _m_splitlines,
    "striptags": _m_parts,
    "swapcase": _m_upper,
    "title": _m_upper,
    "to_bytes": _m_to_bytes,
    "translate": _m_translate,
    "upper": _m_upper,
    "zfill": _m_width,
}
# Methods that return a new value (charged); the others return a part of their receiver
# (get, items, find...) or a small number.
_NEW_FROM_METHODS = frozenset(_METHOD_CHECKS) | {
    "copy", "format", "format_map", "from_bytes", "fromhex", "lstrip", "maketrans", "partition",
    "removeprefix", "removesuffix", "rpartition", "rstrip", "strip", "unescape"}
_RECEIVERS = (str, bytes, list, tuple, dict, int, float)
