"""The size limits of a chat template's render: no string over MAX_RENDER_CHARS characters, at
most MAX_RENDER_BYTES of built values alive (the render's _Budget), and the size of str(),
repr() and json.dumps() of a value computed without building it.
"""

from __future__ import annotations

import json
import string
import sys
import threading
import time
import types
from collections import abc
from typing import TYPE_CHECKING

import jinja2
import jinja2.runtime
import jinja2.utils
from markupsafe import Markup

if TYPE_CHECKING:
    from .jinja import _Deadline


# Bounds on what one expression may build: a hostile template must not exhaust memory.
MAX_REPEAT_LENGTH = 100_000
MAX_POWER_EXPONENT = 1000
# What a render may build. No string over MAX_RENDER_CHARS characters, its output included: a
# prompt fills at most num_ctx tokens, and a million tokens of about 4 characters is 4 Mi
# characters, so real prompts stay far below 16 Mi (64 MiB at most, at 4 bytes a character).
MAX_RENDER_CHARS = 16 << 20
# Nor may the values it built (strings, lists, numbers) hold more than MAX_RENDER_BYTES at
# once: four texts of the longest at 4 bytes a character. The real templates of llama.cpp's
# collection, on one message just under MAX_RENDER_CHARS with an emoji (4 bytes a character),
# peak at 12 bytes a character (3 copies alive at once).
MAX_RENDER_BYTES = 256 << 20
# Integers stay under this many bits (1233 digits; str() refuses 4300 digits anyway).
MAX_INT_BITS = 1 << 12


def _scalar_size(item) -> int:
    """At most how many characters None, a bool, an int or a float prints as (repr or JSON)."""
    if item is None or isinstance(item, bool):
        return 5
    if isinstance(item, int):
        return int(item.bit_length() * 0.30103) + 2
    return 24


# ---------------------------------------------------------------- size limits
#
# No string a render builds is over MAX_RENDER_CHARS characters, its output included, and the
# values it builds (strings, lists, numbers) hold at most MAX_RENDER_BYTES at any time. What
# can grow beyond its inputs in one step (a width, a count, a join, a format, str() of a list
# holding one long string many times) is estimated and refused before it is built; the rest
# is checked and counted once built. The count lives on the thread that renders (_ACTIVE),
# from ChatTemplate.render; outside it only MAX_RENDER_CHARS applies.


class _Active(threading.local):
    budget: _Budget | None = None
    deadline: _Deadline | None = None


_ACTIVE = _Active()

# Values of this many bytes or more count while they live, smaller ones once, when built.
_TRACKED_BYTES = 1024


class _Budget:
    """The memory held by the values one render has built (MAX_RENDER_BYTES), while it renders.

    A value of _TRACKED_BYTES or more is kept in a list until a sweep finds that nothing else
    holds it (its reference count): what a loop builds and drops (ns.s = ns.s ~ part) stops
    counting. A sweep runs every SWEEP_BYTES of such values, and before the limit refuses one.
    Smaller values count once, for good: many of them must be held somewhere (a list, a
    variable) to add up, and what is held is what counts.
    """

    SWEEP_BYTES = 16 << 20

    def __init__(self):
        self.small = 0
        self.live = 0
        self.unswept = 0
        self.peak = 0
        self.values: list = []
        self.sizes: list[int] = []
        self.previous = None
        self.deadline = None
        self.ends = float("inf")

    @property
    def built(self) -> int:
        return self.small + self.live

    def add(self, value, nbytes: int) -> None:
        """Count `value` (None: only its bytes), just built; checks the render's clock too."""
        if value is None or nbytes < _TRACKED_BYTES:
            self.small += nbytes
        else:
            self.values.append(value)
            self.sizes.append(nbytes)
            self.live += nbytes
            self.unswept += nbytes
            if self.unswept > self.SWEEP_BYTES:
                self.sweep()
        total = self.small + self.live
        if total > self.peak:
            self.peak = total
        if total > MAX_RENDER_BYTES:
            self.need(0)
        if time.monotonic() > self.ends:
            self.deadline.check()  # one step of the template may be long: a sort, a regex

    def need(self, nbytes: int) -> None:
        if self.small + self.live + nbytes > MAX_RENDER_BYTES:
            if self.unswept > 1 << 20:
                self.sweep()
            if self.small + self.live + nbytes > MAX_RENDER_BYTES:
                _over_budget()

    def sweep(self) -> None:
        values, sizes = [], []
        for i in range(len(self.values)):
            if sys.getrefcount(self.values[i]) > 2:  # this list and the argument: garbage
                values.append(self.values[i])
                sizes.append(self.sizes[i])
        self.values, self.sizes = values, sizes
        self.live = sum(sizes)
        self.unswept = 0

    def __enter__(self):
        self.previous, _ACTIVE.budget = _ACTIVE.budget, self
        self.deadline = _ACTIVE.deadline
        if self.deadline is not None:
            self.ends = self.deadline.deadline
        return self

    def __exit__(self, *exc):
        _ACTIVE.budget = self.previous
        self.values, self.sizes = [], []  # what the render dropped goes now
        return False


def _too_long(n: int):
    raise jinja2.exceptions.SecurityError(
        f"the template builds a text of {n} characters or more, over MAX_RENDER_CHARS ({MAX_RENDER_CHARS})")


def _check_chars(n: int) -> None:
    if n > MAX_RENDER_CHARS:
        _too_long(n)


def _check_width(width) -> None:
    if isinstance(width, int) and width > MAX_RENDER_CHARS:
        _too_long(width)


def _over_budget():
    raise jinja2.exceptions.SecurityError(
        f"the template holds more than MAX_RENDER_BYTES ({MAX_RENDER_BYTES} bytes) of values it built")


def _need(nbytes: int) -> None:
    """Refuse now what would take the render over MAX_RENDER_BYTES once built."""
    budget = _ACTIVE.budget
    if budget is not None:
        budget.need(nbytes)


def _charge(nbytes: int, value=None) -> None:
    """Count `value` (`nbytes`; None: the bytes only), just built."""
    budget = _ACTIVE.budget
    if budget is not None:
        budget.add(value, nbytes)


def _tick(n: int) -> None:
    # Long walks check the render's clock every few thousand steps.
    if not n & 4095 and _ACTIVE.deadline is not None:
        _ACTIVE.deadline.check()


_CONTAINERS = (list, tuple, dict)


def _charge_new(value, extra: int = 0) -> None:
    """Count a list, tuple or dict just built (and `extra` bytes), with what only it holds (what
    was built with it, as the pieces of a split), each list and long string on its own."""
    budget = _ACTIVE.budget
    if budget is None:
        return
    stack = [value]
    while stack:
        container = stack.pop()
        size = sys.getsizeof(container) + extra
        extra = 0
        if container:
            for part in (container, container.values()) if isinstance(container, dict) else (container,):
                for element in part:
                    # 3: this container, `element` and getrefcount's argument: nothing else holds it.
                    if sys.getrefcount(element) <= 3:
                        if isinstance(element, _CONTAINERS):
                            stack.append(element)
                        else:
                            n = sys.getsizeof(element)
                            if n >= _TRACKED_BYTES:
                                budget.add(element, n)
                            else:
                                size += n
        budget.add(container, size)


def _built(value, *sources):
    """`value`, just returned by an operation on `sources`: a string over MAX_RENDER_CHARS is
    refused, and what is new is counted (not a source returned as it is)."""
    for source in sources:
        if value is source:
            return value
    if isinstance(value, (str, bytes)):
        _check_chars(len(value))
        _charge(sys.getsizeof(value), value)
    elif isinstance(value, _CONTAINERS):
        _charge_new(value)
    elif isinstance(value, (int, float)):
        _charge(sys.getsizeof(value))
    return value


def _need_items(value, per_item: int = 8) -> None:
    """Refuse a list of the items of `value` that would be over the budget (an iterator counts
    its items itself)."""
    if isinstance(value, str):
        # Characters past Latin-1 are a new object each.
        _need(len(value) * (per_item if value.isascii() else per_item + 80))
    elif isinstance(value, (bytes, list, tuple, dict, range)) or hasattr(value, "__len__"):
        try:
            _need(len(value) * per_item)
        except TypeError:
            pass


def _materialized(value):
    """`value`, or the items of an iterator as a list (each counted as it comes)."""
    if isinstance(value, (str, bytes, list, tuple, dict, range)) or hasattr(value, "__len__"):
        return value
    return list(value)


class _BoundedIter:
    """A lazy filter result (map, select, batch, items...): each item it yields is charged to
    the render (a slot, and a list or tuple made for it), so that whatever collects the items
    (|list, join, loop.length) is bounded too."""

    __slots__ = ("_source", "_iterator", "_per_item")

    def __init__(self, source, per_item: int = 8):
        self._source = source
        self._iterator = iter(source)
        self._per_item = per_item

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._iterator)
        budget = _ACTIVE.budget
        if budget is not None:
            # 3: `item`, getrefcount's argument and the generator making it (batch's list).
            if isinstance(item, _CONTAINERS) and sys.getrefcount(item) <= 3:
                _charge_new(item, self._per_item)
            else:
                budget.add(None, self._per_item)
        return item

    def __repr__(self):
        return repr(self._source)


# ---- the size of str(), repr() and json.dumps() of a value, without building it


def _str_repr_len(s: str, ascii_: bool = False) -> int:
    """len(repr(s)) (or ascii(s)), at most a few characters over, in small pieces."""
    show = ascii if ascii_ else repr
    if len(s) <= 65536:
        n = len(show(s))
    elif not ascii_ and s.isascii() and s.isprintable():
        n = len(s) + 2 + s.count("\\") + s.count("'")
    else:
        # Quotes are escaped or not as the whole string decides: count each once more.
        n = 2 + s.count("'") + sum(len(show(s[i:i + 65536])) - 2 for i in range(0, len(s), 65536))
    return n + 8 if isinstance(s, Markup) else n  # Markup('...')


def _shown_size(value, quoted: bool = False, ascii_: bool = False, pretty: bool = False) -> int:
    """An upper bound on len(str(value)) (repr(value) when quoted, ascii() with ascii_,
    pprint.pformat() when pretty), found without building it: a list holding one long string
    many times is short to hold and long to show. Stops once over MAX_RENDER_CHARS."""
    limit = MAX_RENDER_CHARS
    total = 0
    steps = 0
    path: set[int] = set()  # the containers being shown: a cycle shows as [...]
    # Iterators over (item, quoted, characters around it), with their depth and container.
    stack: list = [(iter(((value, quoted, 0),)), 0, None)]
    while stack:
        items, depth, owner = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            path.discard(owner)
            continue
        item, quote, around = entry
        total += around
        steps += 1
        _tick(steps)
        if pretty:
            total += depth + 2  # a line break and indentation before each part, at most
        if isinstance(item, str):
            n = _str_repr_len(item, ascii_) if quote else len(item)
            # pformat cuts a long string into quoted words, a line each, indented.
            total += n + (n // 2 + 1) * (depth + 6) if pretty else n
        elif item is None or isinstance(item, (bool, int, float)):
            total += _scalar_size(item)
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 14
        elif isinstance(item, jinja2.runtime.Undefined):
            total += 9 if quote else 0
        elif isinstance(item, (list, tuple, dict, set, frozenset, jinja2.utils.Namespace,
                               abc.KeysView, abc.ValuesView, abc.ItemsView)):
            if id(item) in path:
                total += 64  # [...], or pformat's <Recursion on list with id=...>
                continue
            total += 16  # brackets, and the names of dict views, sets and tuple subclasses
            owner = id(item)
            path.add(owner)
            if isinstance(item, jinja2.utils.Namespace):
                item = object.__getattribute__(item, "_Namespace__attrs")  # <Namespace {...}>
            if isinstance(item, (dict, abc.ItemsView)):
                # "key: value, " and the parentheses of a dict_items pair
                pairs = item.items() if isinstance(item, dict) else item
                children = (part for key, val in pairs for part in ((key, True, 4), (val, True, 2)))
            else:
                children = ((element, True, 2) for element in item)
            stack.append((children, depth + 1, owner))
        elif isinstance(item, types.MethodType):
            # <bound method T.name of repr(receiver)>
            total += len(repr(item.__func__)) + 32
            stack.append((iter(((item.__self__, True, 0),)), depth, None))
        else:
            total += len(repr(item))  # loop, macro, cycler, range...: short
        if total > limit:
            return total
    return total




def _json_str_len(s: str, ensure_ascii: bool) -> int:
    encode = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    if len(s) <= 65536:
        return len(encode(s))
    return 2 + sum(len(encode(s[i:i + 65536])) - 2 for i in range(0, len(s), 65536))


def _json_size(value, indent, separators, ensure_ascii) -> tuple[int, int]:
    """An upper bound on len(json.dumps(value, ...)), and the number of values in it. Stops
    once over MAX_RENDER_CHARS."""
    if separators is None:
        separators = (", ", ": ") if indent is None else (",", ": ")
    try:
        item_sep, key_sep = (len(part) for part in separators)
    except (TypeError, ValueError):
        return 0, 0  # json.dumps refuses them
    if isinstance(indent, str):
        step, newline = len(indent), 1
    elif isinstance(indent, int):
        _check_width(indent)
        step, newline = max(indent, 0), 1
    else:
        step, newline = 0, 0
    limit = MAX_RENDER_CHARS
    total = count = 0
    # Iterators over (value, characters before it), with their depth.
    stack: list = [(iter(((value, 0),)), 0)]
    while stack:
        items, depth = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        item, before = entry
        total += before
        count += 1
        _tick(count)
        if isinstance(item, str):
            total += _json_str_len(item, ensure_ascii)
        elif item is None or isinstance(item, (bool, int, float)):
            total += _scalar_size(item)
        elif isinstance(item, (list, tuple, dict)) and len(stack) < 10000:  # deeper: RecursionError
            total += 2 + newline + step * depth  # brackets, the closing one on a line of its own
            per_item = item_sep + newline + step * (depth + 1)
            if isinstance(item, dict):
                children = ((val, per_item + key_sep + (_json_str_len(key, ensure_ascii) if isinstance(key, str) else 40))
                            for key, val in item.items())
            else:
                children = ((element, per_item) for element in item)
            stack.append((children, depth + 1))
        # anything else: json.dumps refuses it
        if total > limit:
            return total, count
    return total, count


def _text(value) -> str:
    """str(value), refused before it is built when it would be over MAX_RENDER_CHARS."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (int, float, jinja2.runtime.Undefined)):
        return str(value)
    _check_chars(_shown_size(value))
    return _built(str(value))


def _escaped_len(s: str) -> int:
    """len(markupsafe.escape(s))."""
    return len(s) + 4 * s.count("&") + 3 * (s.count("<") + s.count(">")) + 4 * (s.count('"') + s.count("'"))


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _lines(s: str) -> int:
    """An upper bound on len(s.splitlines())."""
    return 1 + sum(s.count(c) for c in _LINE_BREAKS) if isinstance(s, str) else 1 + s.count(b"\n") + s.count(b"\r")


def _replace_size(s, old, new_len: int, count) -> int:
    found = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(s) + found * max(new_len - len(old), 0)
