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
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
import string
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils
from jinja2 import nodes

from .errors import TemplateError

TEMPLATE_NAME = "chat_template"

# Bounds on what one expression may build: a hostile template must not exhaust memory.
MAX_REPEAT_LENGTH = 100_000
MAX_POWER_EXPONENT = 1000
# A render may take this long (seconds): loops nested over range() must not hang the server.
MAX_RENDER_SECONDS = 5.0

# Names transformers passes a message's reasoning under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _ChatTemplateError(jinja2.exceptions.TemplateError):
    """raise_exception() from inside a template."""


def _raise_exception(message):
    raise _ChatTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # As transformers: no HTML escaping (Jinja's own tojson escapes <, >, &, ').
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


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

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _dict(*args, **kwargs):
    return dict(*args, **kwargs)


def _bounded_mul(a, b):
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_REPEAT_LENGTH:
            raise jinja2.exceptions.SecurityError("repetition too large")
    return operator.mul(a, b)


def _bounded_pow(a, b):
    if isinstance(b, (int, float)) and abs(b) > MAX_POWER_EXPONENT:
        raise jinja2.exceptions.SecurityError("power too large")
    return operator.pow(a, b)


class _ChatSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox where unsafe access fails at once instead of rendering empty."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "*":
            return _bounded_mul(left, right)
        if operator_name == "**":
            return _bounded_pow(left, right)
        return super().call_binop(context, operator_name, left, right)

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
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True,
                       extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
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

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines % self.CHECK_EVERY == 0 and time.monotonic() > self.deadline:
                raise jinja2.exceptions.SecurityError(f"rendering took longer than {self.seconds:g}s")
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
        return self

    def __exit__(self, *exc):
        if self.previous is None:
            sys.settrace(None)
        return False


# ---------------------------------------------------------------- API


def _error(e: Exception, prefix: str = "") -> TemplateError:
    line = getattr(e, "lineno", None)
    msg = getattr(e, "message", None) or str(e)
    return TemplateError(prefix + msg, name=TEMPLATE_NAME, line=line)


class ChatTemplate:
    """A compiled HF chat template."""

    def __init__(self, source: str):
        try:
            tree = _ENV.parse(source, name=TEMPLATE_NAME)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise _error(e, "syntax error: ") from None
        reason = _unsafe_reason(tree)
        if reason is not None:
            raise TemplateError(f"unsafe chat template: it reaches for Python internals ({reason})",
                                name=TEMPLATE_NAME)
        try:
            self._template = _ENV.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise _error(e, "syntax error: ") from None
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
            with _Deadline(MAX_RENDER_SECONDS):
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
