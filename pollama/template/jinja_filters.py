"""Jinja's filters wrapped so that each checks its result's size (jinja_bounds.py) before or
after it builds it, and the one environment chat templates render in (_ENV): the sandbox
(jinja_sandbox.py) with these filters and transformers' globals.
"""

from __future__ import annotations

import functools
import json
import string
from collections import abc

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.runtime
import jinja2.utils
from markupsafe import Markup

from .jinja_bounds import (
    MAX_RENDER_CHARS,
    _BoundedIter,
    _built,
    _check_chars,
    _check_width,
    _escaped_len,
    _json_size,
    _lines,
    _materialized,
    _need,
    _need_items,
    _replace_size,
    _shown_size,
    _text,
    _tick,
    _too_long,
)
from .jinja_format import _percent_size
from .jinja_sandbox import (
    _ChatSandbox,
    _GenerationBlock,
    _Namespace,
    _dict,
    _finalize,
    _lipsum,
    _raise_exception,
    _strftime_now,
)


# ---- filters


def _check_indent(s, width=4, first=False, blank=False):
    if isinstance(width, str):
        step = len(width)
    else:
        _check_width(width)
        step = width if isinstance(width, int) and width > 0 else 0
    if isinstance(s, str):
        lines = _lines(s) + 1
        _check_chars(len(s) + lines * step)
        _need(64 * lines)
    return s


def _check_wordwrap(s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    if isinstance(s, str):
        # A line ends at a space, a hyphen, a line break or after `width` characters.
        ends = s.count(" ") + s.count("\t") + s.count("-") + _lines(s)
        lines = min(len(s), ends + len(s) // max(width, 1) if isinstance(width, int) else len(s)) + 1
        sep = len(wrapstring) if isinstance(wrapstring, str) else 1
        _check_chars(len(s) + lines * sep)
        _need(64 * (lines + ends))  # textwrap's pieces
    return s


def _check_center(value, width=80):
    _check_width(width)
    return value


def _check_format(value, *args, **kwargs):
    size = _percent_size(value, kwargs or args)
    _check_chars(size * 5 if isinstance(value, Markup) else size)
    return value


def _check_join(value, d="", attribute=None, *, autoescape=False):
    items = _materialized(value)
    shown = items if attribute is None else map(jinja2.filters.make_attrgetter(_ENV, attribute), items)
    # Autoescaping, where Markup meets a string the string is escaped.
    escaping = 5 if autoescape and hasattr(d, "__html__") else 1
    sep = _shown_size(d)
    total = 0
    for n, item in enumerate(shown):
        if hasattr(item, "__html__"):
            escaping = 5 if autoescape else 1
            total += len(item) + sep
        else:
            total += _shown_size(item) * escaping + sep
        _tick(n + 1)
        if total > MAX_RENDER_CHARS:
            _too_long(total)
    if escaping > 1:
        _check_chars(5 * total)
    return items


def _check_replace(s, old, new, count=None, *, autoescape=False):
    old, new = _text(old), _text(new)
    size = _replace_size(s, old, len(new) * (5 if autoescape and isinstance(s, Markup) else 1), count)
    if autoescape and (hasattr(old, "__html__") or hasattr(new, "__html__")) and not hasattr(s, "__html__"):
        size *= 5  # the string is escaped first
    _check_chars(size)
    return s


def _check_escape(s):
    if not hasattr(s, "__html__"):
        _check_chars(_escaped_len(s))
    return s


def _check_forceescape(s):
    _check_chars(_escaped_len(s))
    return s


def _check_batch(value, linecount, fill_with=None):
    if fill_with is not None and isinstance(linecount, int):
        _need(8 * linecount)
    return value


def _check_slice(value, slices, fill_with=None):
    _need_items(value)
    return value


def _check_sum(iterable, attribute=None, start=0):
    # A sum of lists is a list as long as all of them.
    items = _materialized(iterable)
    got = items if attribute is None else map(jinja2.filters.make_attrgetter(_ENV, attribute), items)
    lists = isinstance(start, (list, tuple))
    total = len(start) if lists else 0
    for item in got:
        if isinstance(item, (list, tuple)):
            lists = True
            total += len(item)
    if lists:
        _need(16 * total)  # the sum, and the partial sum before it
    return items


def _check_items(per_item: int):
    def check(value, *args, **kwargs):
        _need_items(value, per_item)
        return value

    return check


def _check_reverse(value):
    if not isinstance(value, str):
        _need_items(value)
    return value


def _check_text(factor: int):
    # Filters that write their string again, up to `factor` bytes a character (case mappings
    # can lengthen a character to three) or parts (textwrap, split) of 64 bytes each.
    def check(value, *args, **kwargs):
        if isinstance(value, str):
            _need(factor * (len(value) + 1))
        return value

    return check


def _check_urlize(value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None):
    if isinstance(value, str):
        links = min(len(value) // 4, value.count(".") + value.count("@") + value.count(":")) + 1
        extra = 64 + len(str(target or "")) + len(str(rel or ""))
        _check_chars(10 * len(value) + links * extra)
        _need(64 * (len(value) // 2 + 1))
    return value


def _check_urlencode(value):
    if isinstance(value, str) or not isinstance(value, abc.Iterable):
        _check_chars(12 * _shown_size(value))  # up to 4 UTF-8 bytes a character, each %XX
        return value
    items = value.items() if isinstance(value, dict) else _materialized(value)
    total = 0
    for pair in items:
        total += 2 + sum(12 * _shown_size(part) for part in pair) if isinstance(pair, (tuple, list)) else 24
        if total > MAX_RENDER_CHARS:
            _too_long(total)
    return value if isinstance(value, dict) else items


def _check_xmlattr(d, autospace=True):
    if isinstance(d, abc.Mapping):
        total = 1
        for key in d:
            total += 4 + len(str(key)) + 5 * _shown_size(d[key])
            if total > MAX_RENDER_CHARS:
                _too_long(total)
    return d


def _check_pprint(value):
    _check_chars(_shown_size(value, quoted=True, pretty=True))
    return value


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # As transformers: no HTML escaping (Jinja's own tojson escapes <, >, &, ').
    size, count = _json_size(x, indent, separators, ensure_ascii)
    _check_chars(size)
    if indent is not None:
        _need(64 * count)  # json's pure-Python encoder: a few pieces a value
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# Checks run before a filter, on its value (after the context Jinja passes some) and arguments;
# each returns the value to filter (an iterator's items, collected once).
_FILTER_CHECKS = {
    "batch": _check_batch,
    "center": _check_center,
    "dictsort": _check_items(72),
    "e": _check_escape,
    "escape": _check_escape,
    "forceescape": _check_forceescape,
    "format": _check_format,
    "groupby": _check_items(128),
    "indent": _check_indent,
    "join": _check_join,
    "list": _check_items(8),
    "pprint": _check_pprint,
    "replace": _check_replace,
    "reverse": _check_reverse,
    "slice": _check_slice,
    "sort": _check_items(8),
    "striptags": _check_text(32),
    "sum": _check_sum,
    "title": _check_text(64),
    "urlencode": _check_urlencode,
    "urlize": _check_urlize,
    "wordcount": _check_text(32),
    "wordwrap": _check_wordwrap,
    "xmlattr": _check_xmlattr,
}
# Filters that make a string of their value as str() does: a value that is not a string is
# made one first, within MAX_RENDER_CHARS (str() of a list shows each item in full).
_TEXT_FILTERS = frozenset({"capitalize", "center", "e", "escape", "forceescape", "format", "lower", "replace",
                           "safe", "string", "striptags", "title", "trim", "upper", "urlize", "wordcount"})
# Filters that return an item of their value, or an iterator (charged item by item).
_SAME_FILTERS = frozenset({"attr", "d", "default", "first", "last", "max", "min", "random"})
_LAZY_FILTERS = {"batch": 8, "items": 8, "map": 8, "reject": 8, "rejectattr": 8, "select": 8, "selectattr": 8,
                 "slice": 8, "unique": 64}


def _bounded_filter(name: str, func):
    check = _FILTER_CHECKS.get(name)
    text = name in _TEXT_FILTERS
    same = name in _SAME_FILTERS
    lazy = _LAZY_FILTERS.get(name)
    pass_arg = jinja2.utils._PassArg.from_obj(func)
    skip = 0 if pass_arg is None else 1  # the context, eval context or environment Jinja passes first
    # join and replace escape only when autoescaping (their eval context says).
    escaping = name in ("join", "replace") and pass_arg is jinja2.utils._PassArg.eval_context

    @functools.wraps(func)
    def bounded(*args, **kwargs):
        if len(args) <= skip:
            return func(*args, **kwargs)
        value = args[skip]
        if text and not isinstance(value, str):
            value = _text(value)
        if escaping:
            value = check(value, *args[skip + 1:], autoescape=args[0].autoescape, **kwargs)
        elif check is not None:
            value = check(value, *args[skip + 1:], **kwargs)
        if value is not args[skip]:
            args = (*args[:skip], value, *args[skip + 1:])
        result = func(*args, **kwargs)
        if lazy is not None:
            return result if isinstance(result, (jinja2.runtime.Undefined, _BoundedIter)) \
                else _BoundedIter(result, lazy)
        if same:
            return result
        return _built(result, value)

    return bounded


def _environment() -> _ChatSandbox:
    # optimized=False: no constant folding at compile time (see the module's docstring).
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, optimized=False, finalize=_finalize,
                       extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    for name, func in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, func)
    env.globals["lipsum"] = _lipsum
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _dict
    env.globals["namespace"] = _Namespace
    return env


_ENV = _environment()
