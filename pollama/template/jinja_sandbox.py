"""The sandboxed Jinja environment chat templates render in: transformers' globals
(raise_exception, strftime_now, namespace, dict), bounded operators, finalize and output
buffer, the code generator for `~`, and the {% generation %} block.
"""

from __future__ import annotations

import functools
import operator
import sys
import types
from datetime import datetime

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils
from jinja2 import nodes
from markupsafe import Markup

from .jinja_bounds import (
    MAX_INT_BITS,
    MAX_POWER_EXPONENT,
    MAX_RENDER_CHARS,
    MAX_REPEAT_LENGTH,
    _built,
    _charge,
    _check_chars,
    _escaped_len,
    _shown_size,
    _text,
    _too_long,
)
from .jinja_format import _BoundedEscapeFormatter, _BoundedFormatter, _bounded_add, _bounded_percent
from .jinja_methods import _METHOD_CHECKS, _NEW_FROM_METHODS, _RECEIVERS


class _ChatTemplateError(jinja2.exceptions.TemplateError):
    """raise_exception() from inside a template."""


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
