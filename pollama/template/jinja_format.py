"""Bounded formatting in chat templates: printf-style `fmt % values` and |format, and
str.format, each refused before it builds a text over the size limits (jinja_bounds.py).
"""

from __future__ import annotations

import operator
import re

import jinja2
import jinja2.sandbox
import markupsafe
from markupsafe import Markup

from .jinja_bounds import MAX_RENDER_CHARS, _check_chars, _check_width, _need, _shown_size, _too_long


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
