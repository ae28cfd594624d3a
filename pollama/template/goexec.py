"""Execution of a Go text/template parse tree, with Go's semantics (missingkey=zero).

Go distinguishes a nil interface value read out of a map, a struct field or a slice (a
"typed" nil: asking it for a field is an error) from the invalid value a pipeline leaves
behind (asking it for a field quietly gives nothing). `NIL` is the first, `None` the second;
pipelines turn `NIL` into `None` after every command, as Go's evalPipeline does.
"""

from __future__ import annotations

import dataclasses
import time

from . import gonodes as N
from .errors import TemplateError
from .gofmt import format_value, go_type_name, is_struct, sorted_items
from .gofuncs import NIL, Func, _CallError, _held, _plain, is_true
from .golex import template_error

MAX_TEMPLATE_DEPTH = 64
# An execution may take this long (seconds): {{ range 1000000000 }} must not hang the server.
MAX_EXECUTION_SECONDS = 10.0


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


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
