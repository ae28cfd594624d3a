"""Execution of a Go text/template parse tree, with Go's semantics (missingkey=zero).

Go distinguishes a nil interface value read out of a map, a struct field or a slice (a
"typed" nil: asking it for a field is an error) from the invalid value a pipeline leaves
behind (asking it for a field quietly gives nothing). `NIL` is the first, `None` the second;
pipelines turn `NIL` into `None` after every command, as Go's evalPipeline does.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import urllib.parse
from collections.abc import Callable

from . import gonodes as N
from .errors import TemplateError
from .gofmt import (
    GoValueError,
    format_value,
    go_json,
    go_type_name,
    is_struct,
    sorted_items,
    sprint,
    sprintf,
    sprintln,
)
from .golex import template_error

MAX_TEMPLATE_DEPTH = 64
# An execution may take this long (seconds): {{ range 1000000000 }} must not hang the server.
MAX_EXECUTION_SECONDS = 10.0


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


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


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
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, complex):
        return "complex"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "slice"
    if isinstance(v, dict):
        return "map"
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


# ---------------------------------------------------------------- executor


class State:
    """One execution: output buffer, variable stack, the template set."""

    def __init__(self, trees: dict[str, N.ListNode], funcs: dict[str, Func], name: str, text: str):
        self.trees = trees
        self.funcs = funcs
        self.name = name
        self.text = text
        self.out: list[str] = []
        self.vars: list[list] = []
        self.depth = 0
        self.iterations = 0
        self.deadline = time.monotonic() + MAX_EXECUTION_SECONDS

    # errors
    def error(self, node: N.Node | None, msg: str) -> TemplateError:
        if node is None:
            return TemplateError(msg, name=self.name)
        ctx = str(node)
        if len(ctx) > 20:
            ctx = ctx[:20] + "..."
        loc = template_error(self.text, self.name, "", node.pos)
        return TemplateError(f'executing "{self.name}" at <{ctx}>: {msg}', name=self.name, line=loc.line, col=loc.col)

    # variables
    def push(self, name: str, value) -> None:
        self.vars.append([name, value])

    def mark(self) -> int:
        return len(self.vars)

    def pop(self, mark: int) -> None:
        del self.vars[mark:]

    def set_var(self, node, name: str, value) -> None:
        for v in reversed(self.vars):
            if v[0] == name:
                v[1] = value
                return
        raise self.error(node, f"undefined variable: {name}")

    def var_value(self, node, name: str):
        for v in reversed(self.vars):
            if v[0] == name:
                return v[1]
        raise self.error(node, f"undefined variable: {name}")

    # walking
    def walk(self, dot, node: N.Node) -> None:
        if isinstance(node, N.TextNode):
            self.out.append(node.text)
        elif isinstance(node, N.ActionNode):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, val)
        elif isinstance(node, N.ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, (N.IfNode, N.WithNode)):
            mark = self.mark()
            try:
                val = self.eval_pipeline(dot, node.pipe)
                if is_true(val):
                    self.walk(val if isinstance(node, N.WithNode) else dot, node.list)
                elif node.else_list is not None:
                    self.walk(dot, node.else_list)
            finally:
                self.pop(mark)
        elif isinstance(node, N.RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, N.TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, N.BreakNode):
            raise _Break()
        elif isinstance(node, N.ContinueNode):
            raise _Continue()
        elif isinstance(node, N.CommentNode):
            pass
        else:
            raise self.error(node, f"unknown node: {node}")

    def walk_range(self, dot, r: N.RangeNode) -> None:
        outer = self.mark()
        try:
            val = _plain(self.eval_pipeline(dot, r.pipe))
            mark = self.mark()
            decl = r.pipe.decl

            def one(index, elem) -> bool:
                self.iterations += 1
                if self.iterations % 1024 == 0 and time.monotonic() > self.deadline:
                    raise self.error(r, f"execution took longer than {MAX_EXECUTION_SECONDS:g}s")
                if decl:
                    if r.pipe.is_assign:
                        self.set_var(r, decl[0].ident[0], index if len(decl) > 1 else elem)
                    else:
                        self.vars[-1][1] = elem
                if len(decl) > 1:
                    if r.pipe.is_assign:
                        self.set_var(r, decl[1].ident[0], elem)
                    else:
                        self.vars[-2][1] = index
                try:
                    self.walk(elem, r.list)
                except _Continue:
                    pass
                except _Break:
                    return False
                finally:
                    self.pop(mark)
                return True

            if isinstance(val, (list, tuple)):
                if val:
                    for i, e in enumerate(val):
                        if not one(i, _held(e)):
                            break
                    return
            elif isinstance(val, dict):
                if val:
                    for k, e in sorted_items(val):
                        if not one(k, _held(e)):
                            break
                    return
            elif isinstance(val, int) and not isinstance(val, bool):
                if len(decl) > 1:
                    raise self.error(r, f"can't use {val} to iterate over more than one variable")
                if val > 0:
                    for i in range(val):
                        if not one(i, i):
                            break
                    return
            elif val is None:
                pass
            else:
                raise self.error(r, f"range can't iterate over {format_value(val)}")
            if r.else_list is not None:
                self.walk(dot, r.else_list)
        finally:
            self.pop(outer)

    def walk_template(self, dot, t: N.TemplateNode) -> None:
        tree = self.trees.get(t.name)
        if tree is None:
            raise self.error(t, f'template "{t.name}" not defined')
        if self.depth >= MAX_TEMPLATE_DEPTH:
            raise self.error(t, f"exceeded maximum template depth ({MAX_TEMPLATE_DEPTH})")
        dot = self.eval_pipeline(dot, t.pipe) if t.pipe is not None else None
        saved_vars = self.vars
        self.vars = [["$", dot]]  # no dynamic scoping: a template inherits no variables
        self.depth += 1
        try:
            self.walk(dot, tree)
        finally:
            self.vars = saved_vars
            self.depth -= 1

    # evaluation
    def eval_pipeline(self, dot, pipe: N.PipeNode | None):
        if pipe is None:
            return None
        value = _MISSING
        for cmd in pipe.cmds:
            value = _plain(self.eval_command(dot, cmd, value))
        for v in pipe.decl:
            if pipe.is_assign:
                self.set_var(v, v.ident[0], value)
            else:
                self.push(v.ident[0], value)
        return value

    def not_a_function(self, args: list, final) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(args[0], f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot, cmd: N.CommandNode, final):
        first = cmd.args[0]
        if isinstance(first, N.FieldNode):
            return self.eval_field_chain(dot, dot, first, first.ident, cmd.args, final)
        if isinstance(first, N.ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, N.IdentifierNode):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, N.PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, N.VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, N.BoolNode):
            return first.value
        if isinstance(first, N.DotNode):
            return dot
        if isinstance(first, N.NilNode):
            raise self.error(first, "nil is not a command")
        if isinstance(first, N.NumberNode):
            return first.value
        if isinstance(first, N.StringNode):
            return first.text
        raise self.error(first, f"can't evaluate command {first}")

    def eval_variable(self, dot, node: N.VariableNode, args, final):
        value = self.var_value(node, node.ident[0])
        if len(node.ident) == 1:
            self.not_a_function(args or [node], final)
            return value
        return self.eval_field_chain(dot, value, node, node.ident[1:], args, final)

    def eval_chain(self, dot, chain: N.ChainNode, args, final):
        if isinstance(chain.node, N.NilNode):
            raise self.error(chain, f"indirection through explicit nil in {chain}")
        pipe = self.eval_arg(dot, chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.field, args, final)

    def eval_field_chain(self, dot, receiver, node, ident: list[str], args, final):
        for name in ident[:-1]:
            receiver = self.eval_field(node, name, receiver, None, _MISSING)
        return self.eval_field(node, ident[-1], receiver, args, final)

    def eval_field(self, node, name: str, receiver, args, final):
        if receiver is None:
            return None  # an invalid receiver quietly yields nothing
        if receiver is NIL:
            raise self.error(node, f"nil pointer evaluating interface {{}}.{name}")
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(node, f"{name} is not a method but has arguments")
            return _held(receiver.get(name))
        value = _struct_field(receiver, name)
        if value is not _NO_FIELD:
            if has_args:
                raise self.error(node, f"{name} has arguments but cannot be invoked as function")
            return _held(value)
        raise self.error(node, f"can't evaluate field {name} in type {go_type_name(receiver)}")

    def eval_function(self, dot, node: N.IdentifierNode, args: list, final):
        name = node.name
        spec = self.funcs.get(name)
        if spec is None:
            raise self.error(node, f'"{name}" is not a defined function')
        arg_nodes = args[1:]
        n_in = len(arg_nodes) + (0 if final is _MISSING else 1)
        if spec.variadic:
            if n_in < spec.fixed:
                raise self.error(node, f"wrong number of args for {name}: want at least {spec.fixed} got {len(arg_nodes)}")
        elif n_in != spec.fixed:
            raise self.error(node, f"wrong number of args for {name}: want {spec.fixed} got {n_in}")
        if name in ("and", "or"):
            want = name == "or"
            value = None
            for a in arg_nodes:
                value = self.eval_arg(dot, a)
                if is_true(value) == want:
                    return value
            if final is not _MISSING:
                value = final
            return value
        values = [self.eval_arg(dot, a) for a in arg_nodes]
        if final is not _MISSING:
            values.append(final)
        if spec.string_params or name == "printf":
            checked = values if spec.string_params else values[:1]
            for v in checked:
                if not isinstance(_plain(v), str):
                    raise self.error(node, f"wrong type for value; expected string; got {go_type_name(_plain(v))}")
        try:
            return spec.fn(*values)
        except _CallError as e:
            raise self.error(node, f"error calling {name}: {e}") from None
        except TemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing function is the template's error, never a traceback
            raise self.error(node, f"error calling {name}: {e}") from None

    def eval_arg(self, dot, n: N.Node):
        if isinstance(n, N.DotNode):
            return dot
        if isinstance(n, N.NilNode):
            return None
        if isinstance(n, N.FieldNode):
            return self.eval_field_chain(dot, dot, n, n.ident, [n], _MISSING)
        if isinstance(n, N.VariableNode):
            return self.eval_variable(dot, n, None, _MISSING)
        if isinstance(n, N.PipeNode):
            return self.eval_pipeline(dot, n)
        if isinstance(n, N.IdentifierNode):
            return self.eval_function(dot, n, [n], _MISSING)
        if isinstance(n, N.ChainNode):
            return self.eval_chain(dot, n, None, _MISSING)
        if isinstance(n, N.BoolNode):
            return n.value
        if isinstance(n, N.NumberNode):
            return n.value
        if isinstance(n, N.StringNode):
            return n.text
        raise self.error(n, f"can't handle {n} for arg")

    def print_value(self, node, val) -> None:
        val = _plain(val)
        if val is None:
            self.out.append("<no value>")
            return
        if callable(val) and not hasattr(val, "go_string"):
            raise self.error(node, f"can't print {node} of type {go_type_name(val)}")
        self.out.append(format_value(val))


_MISSING = object()
_NO_FIELD = object()


def _struct_field(obj, name: str):
    """The exported field `name` of a struct-like value, or _NO_FIELD.

    Only dataclass fields and names an object lists in `__go_fields__` are visible: a
    template can never reach Python internals (methods, dunders, private attributes).
    """
    if name.startswith("_") or not name[:1].isupper():
        return _NO_FIELD
    if is_struct(obj):
        if name in {f.name for f in dataclasses.fields(obj)}:
            return getattr(obj, name)
        return _NO_FIELD
    visible = getattr(type(obj), "__go_fields__", ())
    if name in visible:
        return getattr(obj, name)
    return _NO_FIELD


def execute(trees: dict[str, N.ListNode], name: str, text: str, data, funcs: dict[str, Func]) -> str:
    """Run the template `name` of `trees` on `data`; raises TemplateError."""
    state = State(trees, funcs, name, text)
    tree = trees.get(name)
    if tree is None:
        raise TemplateError(f'"{name}" is an incomplete or empty template', name=name)
    state.push("$", data)
    try:
        state.walk(data, tree)
    except (_Break, _Continue):  # cannot happen: the parser allows them only in range
        raise TemplateError("break or continue outside range", name=name) from None
    except RecursionError:
        raise TemplateError("template nesting too deep", name=name) from None
    return "".join(state.out)
