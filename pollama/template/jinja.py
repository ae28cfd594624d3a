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
estimated and refused before it is built; the rest is counted once built (jinja_bounds.py).

Nothing of a template runs before render: Jinja's compiler would otherwise evaluate constant
expressions while compiling (`{{ 'a'|center(10**9) }}`, and in an unsandboxed environment
`{{ 'a' * 10**10 }}`), outside the bounds and the time limit, so the environment compiles
without its optimizer and with a finalize that keeps output expressions for run time. A
template over MAX_TEMPLATE_SIZE characters, or nested beyond what Jinja's parser and
Python's compiler take, is a TemplateError. `template_variables` reads the names a template
uses from its parse tree alone (for capabilities).

This file holds the static checks, template_variables, the data a template sees, the time
limit and the API (ChatTemplate); the environment is built in jinja_filters.py (_ENV: the
wrapped filters) from jinja_sandbox.py (the sandbox, its globals and operators), with
jinja_methods.py (methods), jinja_format.py (% and str.format) and jinja_bounds.py (sizes).
"""

from __future__ import annotations

import dataclasses
import re
import string
import sys
import time
import types
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes

from .errors import TemplateError
from .jinja_bounds import _ACTIVE, _Budget
from .jinja_filters import _ENV
from .jinja_sandbox import _ChatTemplateError

TEMPLATE_NAME = "chat_template"

# The largest chat template taken (characters; 256 Ki compile in about 1 s): real ones run to a few tens of KB.
MAX_TEMPLATE_SIZE = 1 << 18
# A render may take this long (seconds): loops nested over range() must not hang the server.
MAX_RENDER_SECONDS = 5.0

# Names transformers passes a message's reasoning under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


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
