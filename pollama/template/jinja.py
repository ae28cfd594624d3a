"""Hugging Face chat templates (Jinja), rendered in a sandbox as transformers renders them.

The environment is configured as transformers' apply_chat_template configures it:
ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, the loopcontrols extension,
a `tojson` filter that does not escape HTML (ensure_ascii=False, indent/separators/sort_keys
arguments), `raise_exception`, `strftime_now`, a `namespace` and a `dict` that refuse
underscore names, and the variables messages, tools, documents, add_generation_prompt,
bos_token, eos_token plus any extra keyword.

A chat template comes with a model file, so it is untrusted code. Beyond Jinja's sandbox:
templates that name an underscore attribute (`''.__class__`, `cycler.__init__.__globals__`,
`self._TemplateReference__context`, `x|attr('__dict__')`, `'{0.__class__}'.format(x)`) are
refused before anything runs; an unsafe attribute reached at run time raises instead of
rendering as empty; repetition and power are bounded; a render stops after
MAX_RENDER_SECONDS; and everything the template sees is rebuilt from plain JSON types.

Nor may a template take much memory, which the time limit does not stop (one step can build
hundreds of MB): no string it builds, its output included, is over MAX_RENDER_CHARS
characters, and what it builds holds at most MAX_RENDER_BYTES in all. Every way to build
something large goes through the environment: filters (wrapped), method calls (`call`), the
operators (`call_binop`), `~` (a code generator of ours), str() of what is shown
(`finalize`), str.format (`wrap_str_format`), slices (`getitem`) and the text of the render,
macros and blocks (`concat`, `output_buffer`). What can grow past its inputs in one step (a
width, a count, a join, a format, a list holding one long string many times shown in full) is
estimated and refused before it is built; the rest is counted once built. See "size limits".

Nothing of a template runs before render: Jinja's compiler would otherwise evaluate constant
expressions while compiling (`{{ 'a'|center(10**9) }}`, and in an unsandboxed environment
`{{ 'a' * 10**10 }}`), outside the bounds and the time limit, so the environment compiles
without its optimizer and with a finalize that keeps output expressions for run time. A
template over MAX_TEMPLATE_SIZE characters, or nested beyond what Jinja's parser and
Python's compiler take, is a TemplateError. `template_variables` reads the names a template
uses from its parse tree alone (for capabilities).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import re
import string
import sys
import threading
import time
import types
from collections import abc
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.filters
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils
import markupsafe
from jinja2 import nodes
from markupsafe import Markup

from .errors import TemplateError

TEMPLATE_NAME = "chat_template"

# Bounds on what one expression may build: a hostile template must not exhaust memory.
MAX_REPEAT_LENGTH = 100_000
MAX_POWER_EXPONENT = 1000
# The largest chat template taken (characters; 256 Ki compile in about 1 s): real ones run to a few tens of KB.
MAX_TEMPLATE_SIZE = 1 << 18
# A render may take this long (seconds): loops nested over range() must not hang the server.
MAX_RENDER_SECONDS = 5.0
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

# Names transformers passes a message's reasoning under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _ChatTemplateError(jinja2.exceptions.TemplateError):
    """raise_exception() from inside a template."""



def _scalar_size(item) -> int:
    """At most how many characters None, a bool, an int or a float prints as (repr or JSON)."""
    if item is None or isinstance(item, bool):
        return 5
    if isinstance(item, int):
        return int(item.bit_length() * 0.30103) + 2
    return 24

def _raise_exception(message):
    raise _ChatTemplateError(message)


def _check_name(name) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot use underscore names, got {name!r}")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace() refusing underscore attribute names."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)
        _charge(sys.getsizeof(attrs) + sys.getsizeof(self), self)  # a copy of what it was given

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _dict(*args, **kwargs):
    return _built(dict(*args, **kwargs))


def _strftime_now(fmt):
    if isinstance(fmt, str):
        _check_chars(len(fmt) * 32)  # no strftime directive writes more than 32 characters
    return _built(datetime.now().strftime(fmt))


def _lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 - Jinja's names
    # Jinja's lipsum() writes n paragraphs of up to `max` words of up to 14 letters.
    if isinstance(n, int) and isinstance(max, int):
        _check_chars(n * (16 * max + 16))
    return _built(jinja2.utils.generate_lorem_ipsum(n, html, min, max))


def _bounded_mul(a, b):
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) \
                and len(seq) * max(n, 0) > MAX_REPEAT_LENGTH:
            raise jinja2.exceptions.SecurityError("repetition too large")
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS:
        raise jinja2.exceptions.SecurityError(f"number too large (over MAX_INT_BITS, {MAX_INT_BITS} bits)")
    return operator.mul(a, b)


def _bounded_pow(a, b):
    if isinstance(b, (int, float)) and abs(b) > MAX_POWER_EXPONENT:
        raise jinja2.exceptions.SecurityError("power too large")
    if isinstance(a, int) and isinstance(b, int) and b > 0 and (a.bit_length() - 1) * b > MAX_INT_BITS:
        raise jinja2.exceptions.SecurityError(f"power too large (over MAX_INT_BITS, {MAX_INT_BITS} bits)")
    return operator.pow(a, b)


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


# ---- printf-style formatting: `fmt % values`, |format


_NUMBER_CONVERSIONS = frozenset("diouxXeEfFgG")


def _percent_size(fmt, values) -> int:
    """An upper bound on len(fmt % values) (Python's printf-style formatting)."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    positional = list(values) if isinstance(values, tuple) else [values]
    keyed = hasattr(values, "__getitem__") and not isinstance(values, (tuple, str, bytes))
    try:
        return _percent_size_exact(fmt, positional, values if keyed else None)
    except jinja2.exceptions.SecurityError:
        raise
    except Exception:  # noqa: BLE001 - formatting will fail too; bound it all the same
        pass
    # Every directive as wide as the widest number written in the format, showing the longest value.
    widest = max((int(run) if len(run) <= 12 else 10 ** 12 for run in re.findall(r"\d+", fmt)), default=0)
    if keyed:
        try:
            shown = [values[key] for key in values]
        except Exception:  # noqa: BLE001
            shown = []
        positional = positional + shown
    longest = max((_shown_size(v, quoted=True) for v in positional), default=0)
    stars = max((v for v in positional if isinstance(v, int)), default=0)
    return len(fmt) + fmt.count("%") * (2 * widest + stars + longest + 400)


def _percent_size_exact(fmt: str, positional: list, mapping) -> int:
    total = 0
    i = 0
    n = len(fmt)
    index = 0

    def take():
        nonlocal index
        value = positional[index]
        index += 1
        return value

    def number(k):
        m = k
        while k < n and fmt[k].isdigit():
            k += 1
        if k - m > 12:
            _too_long(10 ** 12)
        return (int(fmt[m:k]) if k > m else 0), k

    while True:
        j = fmt.find("%", i)
        if j < 0:
            return total + n - i
        total += j - i
        k = j + 1
        key = None
        if k < n and fmt[k] == "(":
            depth, k = 1, k + 1
            start = k
            while k < n and depth:
                depth += (fmt[k] == "(") - (fmt[k] == ")")
                k += 1
            key = fmt[start:k - 1]
        while k < n and fmt[k] in "-+ #0":
            k += 1
        if k < n and fmt[k] == "*":
            width, k = take(), k + 1
        else:
            width, k = number(k)
        precision = 0
        if k < n and fmt[k] == ".":
            k += 1
            if k < n and fmt[k] == "*":
                precision, k = take(), k + 1
            else:
                precision, k = number(k)
        while k < n and fmt[k] in "hlL":
            k += 1
        conversion = fmt[k]
        k += 1
        width = abs(width) if isinstance(width, int) else 0
        precision = precision if isinstance(precision, int) and precision > 0 else 0
        _check_width(width)
        _check_width(precision)
        if conversion == "%":
            total += max(width, 1)
        else:
            value = mapping[key] if key is not None else take()
            if conversion in _NUMBER_CONVERSIONS:
                if isinstance(value, int):
                    size = int(value.bit_length() * 0.30103) + 2 if conversion in "diu" else value.bit_length() // 3 + 4
                else:
                    size = 330  # a float: 309 digits at most before the point
                size += precision + 8
            elif conversion == "c":
                size = 1
            else:  # s r a b
                size = _shown_size(value, quoted=conversion in "ra", ascii_=conversion == "a")
            total += max(width, size)
        i = k
        if total > MAX_RENDER_CHARS:
            return total


def _bounded_percent(fmt, values):
    size = _percent_size(fmt, values)
    _check_chars(size * 5 if isinstance(fmt, Markup) else size)  # Markup escapes the values
    return operator.mod(fmt, values)


def _bounded_add(a, b):
    if isinstance(a, (str, bytes)) and isinstance(b, (str, bytes)):
        # Markup escapes a plain string added to it.
        _check_chars(len(a) * (5 if isinstance(b, Markup) and not isinstance(a, Markup) else 1)
                     + len(b) * (5 if isinstance(a, Markup) and not isinstance(b, Markup) else 1))
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        _need(8 * (len(a) + len(b)))
    return operator.add(a, b)


# ---- str.format


class _BoundedFormatter(jinja2.sandbox.SandboxedFormatter):
    """The sandbox's str.format, refusing a field before it is built when the text would be
    over MAX_RENDER_CHARS (a width, a precision, a long value shown many times)."""

    escaping = 1

    def vformat(self, format_string, args, kwargs):
        self.length = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value, conversion):
        if conversion in ("r", "a", "s"):
            _check_chars(self.length + _shown_size(value, quoted=conversion != "s", ascii_=conversion == "a"))
        return super().convert_field(value, conversion)

    def format_field(self, value, format_spec):
        spec = str(format_spec)
        runs = re.findall(r"\d+", spec)
        if any(len(run) > 12 for run in runs):
            _too_long(10 ** 12)
        size = sum(int(run) for run in runs) + _shown_size(value)
        if isinstance(value, (int, float)):
            size = 2 * size + 400  # digits grouped, 309 digits of a float at most
        _check_chars(self.length + size * self.escaping)
        shown = super().format_field(value, format_spec)
        self.length += len(shown)
        _check_chars(self.length)
        return shown


class _BoundedEscapeFormatter(_BoundedFormatter, markupsafe.EscapeFormatter):
    escaping = 5  # markupsafe.escape: "&" is "&amp;"


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


def _replace_size(s, old, new_len: int, count) -> int:
    found = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(s) + found * max(new_len - len(old), 0)


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


@jinja2.pass_context
def _finalize(context, value):
    # {{ value }}: str() of a value within MAX_RENDER_CHARS. Taking the context keeps Jinja's
    # compiler from evaluating {{ ... }} expressions it thinks constant at compile time (its
    # Output folding ignores `optimized`).
    if not (isinstance(value, (str, int, float, jinja2.runtime.Undefined)) or value is None):
        value = _text(value)
    if context.eval_ctx.autoescape and isinstance(value, str) and not hasattr(value, "__html__"):
        _check_chars(_escaped_len(value))  # escape() is next
    return value


def _bounded_concat(pieces) -> str:
    """environment.concat: the text of a render, a macro, a block or a {% set %} block, from its
    pieces, refused once over MAX_RENDER_CHARS (pieces are joined a few thousand at a time)."""
    total = 0
    parts: list[str] = []
    chunks: list[str] = []
    for piece in pieces:
        if piece:
            total += len(piece)
            if total > MAX_RENDER_CHARS:
                _too_long(total)
            parts.append(piece)
            if len(parts) == 4096:
                chunks.append("".join(parts))
                parts = []
                _charge(sys.getsizeof(chunks[-1]), chunks[-1])
    if chunks:
        return _built("".join(chunks + parts))
    return _built("".join(parts), *parts[:1])  # one piece is joined as itself


class _OutputBuffer(list):
    """The pieces of the text of a macro, a block, a {% set %} or {% filter %} block, refused
    once over MAX_RENDER_CHARS; empty pieces are dropped and every few thousand joined, so that
    one-character pieces do not take 8 bytes more each."""

    __slots__ = ("length", "start")

    def __init__(self):
        super().__init__()
        self.length = 0
        self.start = 0

    def append(self, piece):
        if piece:
            self.length += len(piece)
            if self.length > MAX_RENDER_CHARS:
                _too_long(self.length)
            list.append(self, piece)
            if len(self) - self.start >= 4096:
                chunk = "".join(self[self.start:])
                del self[self.start:]
                list.append(self, chunk)
                self.start = len(self)
                _charge(sys.getsizeof(chunk), chunk)

    def extend(self, pieces):
        for piece in pieces:
            self.append(piece)


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """Jinja's compiler, with `a ~ b` joined by the environment and the text of macros and
    blocks collected in an _OutputBuffer (both within MAX_RENDER_CHARS)."""

    def buffer(self, frame):
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:
            escaping = "context.eval_ctx.autoescape"
        else:
            escaping = repr(bool(frame.eval_ctx.autoescape))
        self.write("environment.concat_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {escaping})")


class _ChatSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox where unsafe access fails at once instead of rendering empty,
    and where nothing a template builds is over MAX_RENDER_CHARS or the render's budget."""

    code_generator_class = _CodeGenerator
    concat = staticmethod(_bounded_concat)
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "*":
            result = _bounded_mul(left, right)
        elif operator_name == "**":
            result = _bounded_pow(left, right)
        elif operator_name == "+":
            result = _bounded_add(left, right)
        elif operator_name == "%" and isinstance(left, (str, bytes)):
            result = _bounded_percent(left, right)
        else:
            result = super().call_binop(context, operator_name, left, right)
        return _built(result, left, right)

    @staticmethod
    def output_buffer():
        return _OutputBuffer()

    def concat_text(self, values, autoescape=False):
        """`a ~ b ~ ...`: Jinja's str_join (markup_join where autoescaping)."""
        if autoescape:
            _check_chars(sum(len(v) if hasattr(v, "__html__") else 5 * _shown_size(v) for v in values))
            return _built(jinja2.runtime.markup_join(values))
        total = 0
        parts = []
        for value in values:
            text = _text(value)
            total += len(text)
            if total > MAX_RENDER_CHARS:
                _too_long(total)
            parts.append(text)
        return _built("".join(parts), *parts)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        if len(args) + len(kwargs) > 16:
            _charge(8 * len(args) + 100 * len(kwargs))  # f(*items) copies them (cycler, varargs keep them)
        receiver = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", None)
        mine = isinstance(receiver, _RECEIVERS) or receiver in (str, bytes, dict, int, Markup)
        if mine and name in _METHOD_CHECKS:
            # Jinja passes the loop's and block's variables along, for Context.call to drop.
            given = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
            replaced = _METHOD_CHECKS[name](receiver, *args, **given)
            if replaced is not None:
                args = replaced
        result = super().call(__context, __obj, *args, **kwargs)
        if mine and name in _NEW_FROM_METHODS:
            return _built(result, receiver)
        return result

    def getitem(self, obj, argument):
        value = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(value, (str, bytes, list, tuple)):
            return _built(value, obj)
        return value

    def wrap_str_format(self, value):
        # Jinja's, with formatters that keep within MAX_RENDER_CHARS.
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map"):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type = type(f_self)
        is_format_map = value.__name__ == "format_map"
        if isinstance(f_self, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _BoundedFormatter(self)
        vformat = formatter.vformat

        def wrapper(*args, **kwargs):
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return _built(str_type(vformat(f_self, args, kwargs)))

        return functools.update_wrapper(wrapper, value)

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if isinstance(attr, str) and attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj, attribute):
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


class _GenerationBlock(jinja2.ext.Extension):
    """transformers' {% generation %} ... {% endgeneration %}: marks assistant text, renders it as is."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


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


# ---------------------------------------------------------------- static checks


def _format_fields(fmt: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(fmt) if f]
    except ValueError:
        return []


def _unsafe_reason(tree: nodes.Template) -> str | None:
    """Why a parsed template must not run, or None."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call, nodes.Name)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return f"attribute {node.attr!r}"
        # A single leading underscore may be a data key (m['_meta']); the sandbox still guards
        # the attribute lookup Jinja falls back to. Dunders are never data.
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("__"):
            return f"item {node.arg.value!r}"
        if isinstance(node, nodes.Filter) and node.name in ("attr", "map", "selectattr", "rejectattr", "sort",
                                                             "groupby", "sum", "unique", "min", "max"):
            for arg in list(node.args) + [kw.value for kw in node.kwargs]:
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str) \
                        and any(part.startswith("_") for part in arg.value.split(".")):
                    return f"attribute {arg.value!r} in filter {node.name!r}"
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) \
                and node.node.attr in ("format", "format_map") and isinstance(node.node.node, nodes.Const) \
                and isinstance(node.node.node.value, str):
            for f in _format_fields(node.node.node.value):
                if re.search(r"[.\[]\s*_", f) or f.startswith("_"):
                    return f"format field {{{f}}}"
        if isinstance(node, nodes.Name) and node.name.startswith("__") and node.ctx == "load":
            return f"name {node.name!r}"
    return None


# ---------------------------------------------------------------- variables


def _parse(source: str) -> nodes.Template:
    """The parse tree of `source` (nothing compiled or evaluated); TemplateError when it has none."""
    if len(source) > MAX_TEMPLATE_SIZE:
        raise TemplateError(f"chat template too large: {len(source)} characters, the limit is {MAX_TEMPLATE_SIZE}",
                            name=TEMPLATE_NAME)
    try:
        return _ENV.parse(source, name=TEMPLATE_NAME)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise _error(e, "syntax error: ") from None
    except RecursionError:
        raise TemplateError("chat template nested too deeply", name=TEMPLATE_NAME) from None


class _Reads:
    """The names a template reads from its context: Jinja's undeclared variables, found by a
    walk of the parse tree in source order, with the scopes of for, macro, call, with, block
    and set."""

    def __init__(self):
        self.scopes: list[set[str]] = [set()]
        self.found: set[str] = set()

    def declared(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes)

    def scoped(self, *body, declare=()) -> set[str]:
        """Visit `body` (nodes or lists of nodes) in a new scope; the names it assigned."""
        self.scopes.append(set(declare))
        for part in body:
            self.visit(part)
        return self.scopes.pop()

    def visit(self, node) -> None:
        if node is None:
            return
        if isinstance(node, list):
            for n in node:
                self.visit(n)
            return
        if isinstance(node, nodes.Name):
            if node.ctx == "load":
                if not self.declared(node.name):
                    self.found.add(node.name)
            else:  # store, param
                self.scopes[-1].add(node.name)
        elif isinstance(node, nodes.For):
            self.visit(node.iter)
            self.scoped(node.target, node.test, node.body, declare=("loop",))
            self.scoped(node.else_)
        elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
            if isinstance(node, nodes.Macro):
                self.scopes[-1].add(node.name)
            else:
                self.visit(node.call)
            self.visit(node.defaults)
            self.scoped(node.args, node.body, declare=("varargs", "kwargs", "caller"))
        elif isinstance(node, nodes.If):
            # Jinja resolves a name set inside any branch of an if from the context as well
            # (its elif group is a branch of its own, empty when there is none), so such a
            # name is undeclared unless it was set before.
            self.visit(node.test)
            assigned = self.scoped(node.body)
            for elif_ in node.elif_:
                self.visit(elif_.test)
                assigned |= self.scoped(elif_.body)
            assigned |= self.scoped(node.else_)
            self.found.update(name for name in assigned if not self.declared(name))
            self.scopes[-1].update(assigned)
        elif isinstance(node, nodes.Assign):
            self.visit(node.node)
            self.visit(node.target)
        elif isinstance(node, nodes.AssignBlock):
            self.visit(node.filter)
            self.scoped(node.body)
            self.visit(node.target)
        elif isinstance(node, nodes.With):
            self.visit(node.values)
            self.scoped(node.targets, node.body)
        elif isinstance(node, (nodes.Scope, nodes.Block, nodes.ScopedEvalContextModifier)):
            self.scoped(node.body)
        elif isinstance(node, nodes.FromImport):
            self.visit(node.template)
            self.scopes[-1].update(n if isinstance(n, str) else n[1] for n in node.names)
        elif isinstance(node, nodes.Import):
            self.visit(node.template)
            self.scopes[-1].add(node.target)
        else:
            for child in node.iter_child_nodes():
                self.visit(child)


def template_variables(source: str) -> set[str]:
    """The variables a chat template reads (as jinja2.meta.find_undeclared_variables names
    them), from its parse tree only: nothing is compiled, folded or run. TemplateError when
    it does not parse or is over MAX_TEMPLATE_SIZE."""
    tree = _parse(source)
    reads = _Reads()
    try:
        reads.visit(tree.body)
    except RecursionError:
        raise TemplateError("chat template nested too deeply", name=TEMPLATE_NAME) from None
    return {name for name in reads.found if name not in _ENV.globals and name != "self"}


# ---------------------------------------------------------------- data


def plain_data(value: Any) -> Any:
    """`value` rebuilt from plain JSON types (anything else becomes the placeholder "<TypeName>")."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _alias_reasoning(messages: list) -> list:
    # As transformers: a message's reasoning is visible as reasoning_content and as thinking.
    out = []
    for m in messages:
        if isinstance(m, dict):
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


# ---------------------------------------------------------------- time limit


class _Deadline:
    """Stops a render that runs past MAX_RENDER_SECONDS.

    Jinja compiles a template to Python code named "<template>"; a line tracer on those
    frames only (other frames run untraced) checks the clock every 1024 lines. When another
    tracer is active (a debugger, coverage) it is left alone and no limit applies.
    """

    CHECK_EVERY = 1024

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lines = 0
        self.deadline = 0.0
        self.previous = None

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise jinja2.exceptions.SecurityError(f"rendering took longer than {self.seconds:g}s")

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines % self.CHECK_EVERY == 0:
                self.check()
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename == "<template>":
            return self._local
        return None

    def __enter__(self):
        self.previous = sys.gettrace()
        if self.previous is None:
            self.deadline = time.monotonic() + self.seconds
            sys.settrace(self._global)
            _ACTIVE.deadline = self  # checked by the size limits' long steps too
        return self

    def __exit__(self, *exc):
        if self.previous is None:
            sys.settrace(None)
            _ACTIVE.deadline = None
        return False


# ---------------------------------------------------------------- API


def _error(e: Exception, prefix: str = "") -> TemplateError:
    line = getattr(e, "lineno", None)
    msg = getattr(e, "message", None) or str(e)
    return TemplateError(prefix + msg, name=TEMPLATE_NAME, line=line)


class ChatTemplate:
    """A compiled HF chat template."""

    def __init__(self, source: str):
        tree = _parse(source)
        reason = _unsafe_reason(tree)
        if reason is not None:
            raise TemplateError(f"unsafe chat template: it reaches for Python internals ({reason})",
                                name=TEMPLATE_NAME)
        try:
            self._template = _ENV.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise _error(e, "syntax error: ") from None
        except (RecursionError, SyntaxError, MemoryError) as e:
            # Python's own limits on the compiled code (nesting of blocks and indentation).
            raise TemplateError(f"chat template too deeply nested to compile ({type(e).__name__})",
                                name=TEMPLATE_NAME) from None
        self.source = source

    def render(self, messages: list, *, tools: list | None = None, documents: list | None = None,
               add_generation_prompt: bool = False, bos_token: str = "", eos_token: str = "", **extra) -> str:
        """Render `messages` as transformers' apply_chat_template(tokenize=False) would."""
        data = plain_data(extra)
        data.update(
            messages=_alias_reasoning(plain_data(list(messages))),
            tools=plain_data(tools),
            documents=plain_data(documents),
            add_generation_prompt=bool(add_generation_prompt),
            bos_token=plain_data(bos_token),
            eos_token=plain_data(eos_token),
        )
        try:
            with _Deadline(MAX_RENDER_SECONDS), _Budget():
                return self._template.render(**data)
        except _ChatTemplateError as e:
            raise _error(e, "the template raised: ") from None
        except jinja2.exceptions.SecurityError as e:
            raise _error(e, "unsafe chat template: ") from None
        except jinja2.exceptions.TemplateError as e:
            raise _error(e) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, RecursionError) as e:
            raise TemplateError(f"error rendering: {type(e).__name__}: {e}", name=TEMPLATE_NAME) from None


@lru_cache(maxsize=64)
def compile_chat_template(source: str) -> ChatTemplate:
    """The compiled template for `source` (cached); TemplateError when it is invalid or unsafe."""
    return ChatTemplate(source)


def render_chat_template(source: str, messages: list, *, tools: list | None = None,
                         add_generation_prompt: bool = False, bos_token: str = "", eos_token: str = "",
                         **extra) -> str:
    """Render a HF chat_template on `messages` in the sandbox."""
    return compile_chat_template(source).render(
        messages, tools=tools, add_generation_prompt=add_generation_prompt,
        bos_token=bos_token, eos_token=eos_token, **extra,
    )
