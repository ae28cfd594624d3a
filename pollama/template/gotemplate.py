"""Go text/template, as Ollama parses and uses it (template/template.go).

    tmpl = Template.parse("{{ range .Messages }}{{ .Role }}: {{ .Content }}\\n{{ end }}")
    tmpl.execute({"Messages": [...]})

Parsing is Ollama's: missingkey=zero, its functions (json, currentDate, yesterdayDate,
toTypeScriptType) beside Go's builtins, and an implicit {{ .Response }} appended when the
template mentions neither .Messages nor .Response.

Where this differs from Go and Ollama, on purpose:
* parse errors carry a column as well as a line (Go names the line only);
* data is Python: dicts are map[string]any, dataclasses are structs whose fields (never
  methods, never underscore names) are visible; `call` has nothing to call;
* where Ollama's cut after .Response would crash (an else-list after the cut) the list is
  emptied; an execution stops after MAX_EXECUTION_SECONDS and at MAX_TEMPLATE_DEPTH nested
  template calls instead of Go's 100000; a text over goparse.MAX_TEMPLATE_SIZE characters, or
  nested over goparse.MAX_NESTING_DEPTH levels, does not parse (Go has no such limits).
"""

from __future__ import annotations

from functools import lru_cache

from . import gonodes as N
from . import goparse as P
from .errors import TemplateError
from .goexec import execute
from .gofuncs import BUILTINS, OLLAMA_FUNCS, Func
from .golex import template_error

__all__ = ["Template", "TemplateError", "capabilities", "parse_cached", "thinking_tags", "tool_call_tag"]

FUNCS: dict[str, Func] = {**BUILTINS, **OLLAMA_FUNCS}


def _response_action() -> N.ActionNode:
    field = N.FieldNode(0, ["Response"])
    return N.ActionNode(0, N.PipeNode(0, cmds=[N.CommandNode(0, [field])]))


class Template:
    """A parsed Go template with the set of templates it defines."""

    def __init__(self, text: str, name: str, trees: dict[str, N.ListNode]):
        self.text = text
        self.name = name
        self.trees = trees

    @classmethod
    def parse(cls, text: str, name: str = "", *, ollama: bool = True) -> Template:
        """Parse `text` as Go does; with `ollama` (default) apply Ollama's implicit {{ .Response }}."""
        trees = P.parse(text, name, set(FUNCS))
        tmpl = cls(text, name, trees)
        if ollama:
            # Ollama's Vars fails on {{ template "x" }} without a pipeline, and so does its Parse.
            for tree in trees.values():
                node = _find(tree, lambda n: isinstance(n, N.TemplateNode) and n.pipe is None)
                if node is not None:
                    raise template_error(text, name, "undefined template specified", node.pos)
            names = tmpl.vars()
            if "messages" not in names and "response" not in names:
                trees[name].nodes.append(_response_action())
        return tmpl

    @property
    def root(self) -> N.ListNode:
        """The parse tree of the main template."""
        return self.trees[self.name]

    def execute(self, data) -> str:
        """Render the template on `data` (dicts are Go maps, dataclasses Go structs)."""
        return execute(self.trees, self.name, self.text, data, FUNCS)

    def __str__(self) -> str:
        return self.text

    def vars(self) -> set[str]:
        """Identifiers the templates reference, lower-cased (Ollama's Vars)."""
        names: set[str] = set()
        for tree in self.trees.values():
            for node in tree.nodes:
                names.update(n.lower() for n in identifiers(node))
        return names

    def contains_response(self) -> bool:
        """Whether the template refers to .Response."""
        return "response" in self.vars()

    def contains(self, s: str) -> bool:
        """Whether the template's source text contains `s` (Ollama's Contains)."""
        return s in self.text

    def without_after_response(self) -> Template:
        """A copy whose main tree drops every node after the first .Response field (legacy mode's open turn)."""
        try:
            root = self.root.copy()
        except RecursionError:  # the parser's MAX_NESTING_DEPTH keeps this from happening
            raise TemplateError("template nested too deeply to copy", name=self.name) from None
        cut = [False]
        _delete_after_response(root, cut)
        trees = dict(self.trees)
        trees[self.name] = root
        return Template(self.text, self.name, trees)


@lru_cache(maxsize=32)
def parse_cached(text: str) -> Template:
    """Template.parse(text), kept for the next caller with the same text: the server parses a
    model's template off its event loop (capabilities, the prompt) and the output parser then
    finds it here. The Template is shared: read it, never change it."""
    return Template.parse(text)


def _find(n, match) -> N.Node | None:
    """The first node under `n` (in the order Go's walks visit them) for which `match` is true."""
    if match(n):
        return n
    children: list = []
    if isinstance(n, N.ListNode):
        children = n.nodes
    elif isinstance(n, N.BranchNode):
        children = [n.list, n.else_list]
    for c in children:
        if c is not None and (found := _find(c, match)) is not None:
            return found
    return None


def identifiers(n: N.Node) -> list[str]:
    """Field and variable identifiers under `n`, as Ollama's Identifiers walks them."""
    if isinstance(n, N.ListNode):
        return [i for c in n.nodes for i in identifiers(c)]
    if isinstance(n, N.TemplateNode):
        return identifiers(n.pipe) if n.pipe is not None else []
    if isinstance(n, N.ActionNode):
        return identifiers(n.pipe)
    if isinstance(n, N.BranchNode):
        out = identifiers(n.pipe) + identifiers(n.list)
        if n.else_list is not None:
            out += identifiers(n.else_list)
        return out
    if isinstance(n, N.PipeNode):
        return [i for c in n.cmds for a in c.args for i in identifiers(a)]
    if isinstance(n, (N.FieldNode, N.VariableNode)):
        return list(n.ident)
    return []


def _delete_after_response(n: N.Node, cut: list[bool]) -> N.Node | None:
    """Ollama's deleteNode: keep nodes up to the first .Response field, drop every later one.

    As Ollama, the pipelines of if/range/with are not searched for .Response. Where Go would
    crash (a later else-list of a cut branch), the list is emptied instead.
    """
    if isinstance(n, N.FieldNode) and "Response" in n.ident:
        cut[0] = True
        return n
    if cut[0]:
        return None
    if isinstance(n, N.ListNode):
        n.nodes = [c for c in (_delete_after_response(c, cut) for c in n.nodes) if c is not None]
        return n
    if isinstance(n, N.BranchNode):
        n.list = _delete_after_response(n.list, cut) or N.ListNode(n.list.pos)
        if n.else_list is not None:
            n.else_list = _delete_after_response(n.else_list, cut) or N.ListNode(n.else_list.pos)
        return n
    if isinstance(n, N.ActionNode):
        pipe = _delete_after_response(n.pipe, cut)
        if pipe is None:
            return None
        n.pipe = pipe
        return n
    if isinstance(n, N.PipeNode):
        cmds = []
        for c in n.cmds:
            args = [a for a in (_delete_after_response(a, cut) for a in c.args) if a is not None]
            if not args:
                return None
            c.args = args
            cmds.append(c)
        if not cmds:
            return None
        n.cmds = cmds
        return n
    return n


# ---------------------------------------------------------------- tree inference (tools/, thinking/)


def _pipe_has_field(pipe: N.PipeNode, name: str) -> bool:
    return any(isinstance(a, N.FieldNode) and name in a.ident for c in pipe.cmds for a in c.args)


def _find_tool_call_if(nodes: list[N.Node]) -> N.IfNode | None:
    for n in nodes:
        if isinstance(n, N.IfNode):
            if _pipe_has_field(n.pipe, "ToolCalls"):
                return n
            for lst in (n.list, n.else_list):
                if lst is not None and (found := _find_tool_call_if(lst.nodes)):
                    return found
        elif isinstance(n, N.ListNode):
            if found := _find_tool_call_if(n.nodes):
                return found
        elif isinstance(n, (N.RangeNode, N.WithNode)):
            for lst in (n.list, n.else_list):
                if lst is not None and (found := _find_tool_call_if(lst.nodes)):
                    return found
    return None


def _first_text(nodes: list[N.Node]) -> N.TextNode | None:
    for n in nodes:
        if isinstance(n, N.TextNode):
            if n.text.strip() == "":
                continue
            return n
        if isinstance(n, N.ListNode):
            if found := _first_text(n.nodes):
                return found
        elif isinstance(n, N.BranchNode):
            for lst in (n.list, n.else_list):
                if lst is not None and (found := _first_text(lst.nodes)):
                    return found
            return None  # text after a control structure is not the tag
        elif isinstance(n, N.ActionNode):
            return None
    return None


def tool_call_tag(tmpl: Template) -> str | None:
    """The text a model writes before tool calls, inferred as Ollama's tools.parseTag does.

    The first text inside the first {{ if }} whose pipeline mentions .ToolCalls, cut at its
    first "{" and trimmed. None where Ollama falls back to "{" (the caller's choice).
    """
    node = _find_tool_call_if(tmpl.root.nodes)
    if node is None:
        return None
    text = _first_text(node.list.nodes)
    if text is None:
        return None
    tag = text.text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or None


def _children(n: N.Node) -> list[N.Node]:
    if isinstance(n, N.ListNode):
        return list(n.nodes)
    if isinstance(n, N.BranchNode):
        return [_Branch(n)]
    if isinstance(n, _Branch):
        b = n.node
        return [x for x in (b.pipe, b.list, b.else_list) if x is not None]
    if isinstance(n, N.ActionNode):
        return [n.pipe]
    if isinstance(n, N.TemplateNode):
        return [n.pipe] if n.pipe is not None else []
    if isinstance(n, N.PipeNode):
        return list(n.cmds)
    if isinstance(n, N.CommandNode):
        return list(n.args)
    return []


class _Branch:
    """Go's BranchNode, which its tree walk visits as a node of its own below an If/Range/With."""

    def __init__(self, node: N.BranchNode):
        self.node = node


def _range_uses_field(r: N.RangeNode, name: str) -> bool:
    stack: list = [r.pipe]
    while stack:
        n = stack.pop()
        if isinstance(n, N.FieldNode) and n.ident[0] == name:
            return True
        stack.extend(_children(n))
    return False


def thinking_tags(tmpl: Template) -> tuple[str, str] | None:
    """Opening and closing thinking tags inferred as Ollama's thinking.InferTags does.

    For each .Thinking field inside a range over .Messages, the nearest enclosing list's
    first and last text nodes (trimmed) become the tags; the last such field wins. None
    when either tag is missing.
    """
    opening, closing = "", ""
    ancestors: list = []

    def visit(n) -> None:
        nonlocal opening, closing
        ancestors.append(n)
        if isinstance(n, N.FieldNode) and n.ident and n.ident[0] == "Thinking":
            rng = next((a for a in reversed(ancestors) if isinstance(a, N.RangeNode)), None)
            if rng is not None and _range_uses_field(rng, "Messages"):
                lst = next((a for a in reversed(ancestors) if isinstance(a, N.ListNode)), None)
                if lst is not None and lst.nodes:
                    if isinstance(lst.nodes[0], N.TextNode):
                        opening = lst.nodes[0].text.strip()
                    if isinstance(lst.nodes[-1], N.TextNode):
                        closing = lst.nodes[-1].text.strip()
        for c in _children(n):
            visit(c)
        ancestors.pop()

    visit(tmpl.root)
    if opening and closing:
        return opening, closing
    return None


def capabilities(tmpl: Template) -> set[str]:
    """What the template lets a model do, as Ollama reads it: "tools", "insert", "thinking"."""
    names = tmpl.vars()
    found = set()
    if "tools" in names:
        found.add("tools")
    if "suffix" in names:
        found.add("insert")
    if thinking_tags(tmpl) is not None:
        found.add("thinking")
    return found
