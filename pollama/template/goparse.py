"""Parse tree of Go's text/template, built as Go's text/template/parse builds it.

The node kinds and their nesting are Go's (an `else if` is an IfNode alone in the else
list of its parent IfNode), because Ollama's tree walks (tool-tag and thinking-tag
inference, the cut after .Response) depend on that exact shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TemplateError
from .gofmt import go_quote
from .golex import Tok, Token, lex, template_error
from .gonodes import (
    ActionNode,
    BoolNode,
    BranchNode,
    BreakNode,
    ChainNode,
    CommandNode,
    CommentNode,
    ContinueNode,
    DotNode,
    FieldNode,
    IdentifierNode,
    IfNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    PipeNode,
    RangeNode,
    StringNode,
    TemplateNode,
    TextNode,
    VariableNode,
    WithNode,
    go_unquote,
    parse_number,
)

# ---------------------------------------------------------------- parser

# Control structures ({{if}}, {{range}}, {{with}}, {{block}}, each {{else if}}) and
# parenthesized pipelines nest at most this deep. Real templates nest a handful of levels
# (command-r's, the deepest built-in one, 8); Go's parser allows 10000 parentheses, but here
# every level costs Python frames in the parser and in the tree walks and copies after it
# (a level of parentheses about a dozen in Node.copy), so a hostile template must stop well
# inside Python's recursion limit.
MAX_NESTING_DEPTH = 50
# The largest template text parsed (characters; 256 Ki parse in about 0.4 s): Ollama's run to a few KB.
MAX_TEMPLATE_SIZE = 1 << 18


class Parser:
    """Recursive-descent parser producing {name: ListNode} for the main template and its defines."""

    def __init__(self, text: str, name: str, funcs: set[str]):
        self.text = text
        self.name = name
        self.funcs = funcs
        self.tokens = lex(text, name)
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0  # nesting of control structures and parentheses, up to MAX_NESTING_DEPTH
        self.trees: dict[str, ListNode] = {}

    # token stream
    def next(self) -> Token:
        t = self.tokens[self.i]
        if self.i < len(self.tokens) - 1:
            self.i += 1
        return t

    def backup(self, n: int = 1) -> None:
        self.i -= n

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        t = self.next()
        while t.typ is Tok.SPACE:
            t = self.next()
        return t

    def peek_non_space(self) -> Token:
        t = self.next_non_space()
        self.backup()
        return t

    def error(self, msg: str, tok: Token | None = None) -> TemplateError:
        pos = (tok or self.tokens[max(self.i - 1, 0)]).pos
        return template_error(self.text, self.name, msg, pos)

    def expect(self, typ: Tok, context: str) -> Token:
        t = self.next_non_space()
        if t.typ is not typ:
            raise self.unexpected(t, context)
        return t

    def enter(self, tok: Token | None = None) -> None:
        """One level deeper; a TemplateError past MAX_NESTING_DEPTH (leave() undoes it)."""
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            raise self.error(f"template nested too deeply: more than {MAX_NESTING_DEPTH} levels of "
                             "{{if}}, {{range}}, {{with}}, {{block}}, {{else if}} or parentheses", tok)

    def leave(self) -> None:
        self.depth -= 1

    def unexpected(self, t: Token, context: str) -> TemplateError:
        if t.typ is Tok.ERROR:
            return self.error(t.val, t)
        return self.error(f"unexpected {t} in {context}", t)

    # grammar
    def parse(self) -> dict[str, ListNode]:
        root = ListNode(0)
        while self.peek().typ is not Tok.EOF:
            if self.peek().typ is Tok.LEFT_DELIM:
                save = self.i
                self.next()
                if self.next_non_space().typ is Tok.DEFINE:
                    self.parse_definition()
                    continue
                self.i = save
            node = self.text_or_action()
            if isinstance(node, (EndMarker, ElseMarker)):
                raise self.error(f"unexpected {node}", node.token)
            root.nodes.append(node)
        self._add(self.name, root)
        return self.trees

    def _add(self, name: str, tree: ListNode) -> None:
        # As Go: an empty redefinition never replaces a non-empty one.
        if name in self.trees and _is_empty(tree) and not _is_empty(self.trees[name]):
            return
        self.trees[name] = tree

    def parse_definition(self) -> None:
        context = "define clause"
        name_tok = self.next_non_space()
        if name_tok.typ not in (Tok.STRING, Tok.RAW_STRING):
            raise self.unexpected(name_tok, context)
        name = self._unquote(name_tok)
        self.expect(Tok.RIGHT_DELIM, context)
        saved_vars = self.vars
        self.vars = ["$"]
        body, end = self.item_list()
        if not isinstance(end, EndMarker):
            raise self.error(f"unexpected {end} in {context}", end.token)
        self.vars = saved_vars
        self._add(name, body)

    def item_list(self) -> tuple[ListNode, EndMarker | ElseMarker]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ is not Tok.EOF:
            node = self.text_or_action()
            if isinstance(node, (EndMarker, ElseMarker)):
                return lst, node
            lst.nodes.append(node)
        raise self.error("unexpected EOF", self.peek())

    def text_or_action(self) -> Node:
        t = self.next_non_space()
        if t.typ is Tok.TEXT:
            return TextNode(t.pos, t.val)
        if t.typ is Tok.LEFT_DELIM:
            return self.action()
        if t.typ is Tok.COMMENT:
            return CommentNode(t.pos, t.val)
        raise self.unexpected(t, "input")

    def action(self) -> Node:
        t = self.next_non_space()
        keyword = _KEYWORD_ACTIONS.get(t.typ)
        if keyword is not None:
            return keyword(self, t)
        self.backup()
        tok = self.peek()
        return ActionNode(tok.pos, self.pipeline("command", Tok.RIGHT_DELIM))

    def break_control(self, t: Token, word: str, cls) -> Node:
        nt = self.next_non_space()
        if nt.typ is not Tok.RIGHT_DELIM:
            raise self.unexpected(nt, "{{" + word + "}}")
        if self.range_depth == 0:
            raise self.error("{{" + word + "}} outside {{range}}", t)
        return cls(t.pos)

    def end_control(self, t: Token) -> EndMarker:
        self.expect(Tok.RIGHT_DELIM, "end")
        return EndMarker(t)

    def else_control(self, t: Token) -> ElseMarker:
        peek = self.peek_non_space()
        if peek.typ in (Tok.IF, Tok.WITH):
            return ElseMarker(t, chained=peek.typ)
        self.expect(Tok.RIGHT_DELIM, "else")
        return ElseMarker(t, chained=None)

    def control(self, cls, context: str, t: Token) -> BranchNode:
        mark = len(self.vars)
        self.enter(t)
        try:
            pipe = self.pipeline(context, Tok.RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            body, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list = None
            if isinstance(nxt, ElseMarker):
                if context == "if" and nxt.chained is Tok.IF:
                    self.next_non_space()  # the "if"
                    else_list = ListNode(nxt.token.pos, [self.control(IfNode, "if", nxt.token)])
                elif context == "with" and nxt.chained is Tok.WITH:
                    self.next_non_space()
                    else_list = ListNode(nxt.token.pos, [self.control(WithNode, "with", nxt.token)])
                else:
                    if nxt.chained is not None:
                        raise self.unexpected(self.peek_non_space(), "else")
                    else_list, end = self.item_list()
                    if not isinstance(end, EndMarker):
                        raise self.error(f"expected end; found {end}", end.token)
            return cls(t.pos, pipe, body, else_list)
        finally:
            del self.vars[mark:]
            self.leave()

    def template_name(self, context: str) -> str:
        """The quoted name after {{block or {{template (Go's parseTemplateName)."""
        name_tok = self.next_non_space()
        if name_tok.typ not in (Tok.STRING, Tok.RAW_STRING):
            raise self.unexpected(name_tok, context)
        return self._unquote(name_tok)

    def block_control(self, t: Token) -> Node:
        context = "block clause"
        name = self.template_name(context)
        pipe = self.pipeline(context, Tok.RIGHT_DELIM)
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        self.enter(t)
        body, end = self.item_list()
        self.leave()
        if not isinstance(end, EndMarker):
            raise self.error(f"unexpected {end} in {context}", end.token)
        self.vars, self.range_depth = saved_vars, saved_depth
        self._add(name, body)
        return TemplateNode(t.pos, name, pipe)

    def template_control(self, t: Token) -> Node:
        context = "template clause"
        name = self.template_name(context)
        pipe = None
        if self.next_non_space().typ is not Tok.RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, Tok.RIGHT_DELIM)
        return TemplateNode(t.pos, name, pipe)

    def _unquote(self, tok: Token) -> str:
        try:
            return go_unquote(tok.val)
        except ValueError as e:
            raise self.error(f"invalid syntax: {tok.val} ({e})", tok) from None

    def pipeline(self, context: str, end: Tok) -> PipeNode:
        start = self.peek_non_space()
        pipe = PipeNode(start.pos)
        # optional declarations: $x := / $x = / $i, $v :=
        if self.peek_non_space().typ is Tok.VARIABLE:
            save = self.i
            v = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.typ in (Tok.ASSIGN, Tok.DECLARE):
                self.next_non_space()
                pipe.is_assign = nxt.typ is Tok.ASSIGN
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                # As Go: an assignment to an undeclared variable fails only when executed.
                self.vars.append(v.val)
            elif nxt.typ is Tok.CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                if context != "range":
                    raise self.error(f"too many declarations in {context}", nxt)
                v2 = self.next_non_space()
                if v2.typ is not Tok.VARIABLE:
                    raise self.error("range can only initialize variables", v2)
                op = self.next_non_space()
                if op.typ not in (Tok.ASSIGN, Tok.DECLARE):
                    raise self.error(f"too many declarations in {context}", op)
                pipe.is_assign = op.typ is Tok.ASSIGN
                pipe.decl.append(VariableNode(v2.pos, [v2.val]))
                self.vars.append(v2.val)
            else:
                self.i = save
        while True:
            t = self.next_non_space()
            if t.typ is end:
                self._check_pipeline(pipe, context, t)
                return pipe
            if t.typ in (Tok.BOOL, Tok.CHAR_CONSTANT, Tok.DOT, Tok.FIELD, Tok.IDENTIFIER, Tok.NUMBER,
                         Tok.NIL, Tok.RAW_STRING, Tok.STRING, Tok.VARIABLE, Tok.LEFT_PAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(t, context)

    def _check_pipeline(self, pipe: PipeNode, context: str, t: Token) -> None:
        if not pipe.cmds:
            raise self.error("missing command", t)
        for i, c in enumerate(pipe.cmds[1:], start=2):
            first = c.args[0]
            if isinstance(first, (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                raise template_error(self.text, self.name, f"non executable command in pipeline stage {i}", first.pos)

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            t = self.next()
            if t.typ is Tok.SPACE:
                continue
            if t.typ in (Tok.RIGHT_DELIM, Tok.RIGHT_PAREN):
                self.backup()
            elif t.typ is Tok.PIPE:
                pass
            else:
                raise self.unexpected(t, "operand")
            break
        if not cmd.args:
            raise self.error("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ is Tok.FIELD:
            fields = []
            while self.peek().typ is Tok.FIELD:
                fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(node.pos, node.ident + fields)
            if isinstance(node, VariableNode):
                return VariableNode(node.pos, node.ident + fields)
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                raise self.error(f"unexpected . after term {go_quote(str(node))}")
            return ChainNode(node.pos, node, fields)
        return node

    def term(self) -> Node | None:
        t = self.next_non_space()
        typ = t.typ
        if typ is Tok.IDENTIFIER:
            if t.val not in self.funcs:
                raise self.error(f"function {go_quote(t.val)} not defined", t)
            return IdentifierNode(t.pos, t.val)
        if typ is Tok.DOT:
            return DotNode(t.pos)
        if typ is Tok.NIL:
            return NilNode(t.pos)
        if typ is Tok.VARIABLE:
            if t.val not in self.vars:
                raise self.error(f"undefined variable {go_quote(t.val)}", t)
            return VariableNode(t.pos, [t.val])
        if typ is Tok.FIELD:
            return FieldNode(t.pos, [t.val[1:]])
        if typ is Tok.BOOL:
            return BoolNode(t.pos, t.val == "true")
        if typ in (Tok.CHAR_CONSTANT, Tok.NUMBER):
            try:
                return NumberNode(t.pos, t.val, parse_number(t.val))
            except (ValueError, OverflowError):
                raise self.error(f"illegal number syntax: {go_quote(t.val)}", t) from None
        if typ is Tok.LEFT_PAREN:
            self.enter(t)
            pipe = self.pipeline("parenthesized pipeline", Tok.RIGHT_PAREN)
            self.leave()
            return pipe
        if typ in (Tok.STRING, Tok.RAW_STRING):
            return StringNode(t.pos, t.val, self._unquote(t))
        self.backup()
        return None


@dataclass
class EndMarker:
    """{{end}}, returned to the control structure that waits for it."""

    token: Token

    def __str__(self) -> str:
        return "{{end}}"


@dataclass
class ElseMarker:
    """{{else}} (and whether an if/with follows it), returned to its control structure."""

    token: Token
    chained: Tok | None

    def __str__(self) -> str:
        return "{{else}}"


# The action that each keyword opening {{...}} starts (as Go's parse.go switch in action()).
_KEYWORD_ACTIONS = {
    Tok.BLOCK: Parser.block_control,
    Tok.BREAK: lambda p, t: p.break_control(t, "break", BreakNode),
    Tok.CONTINUE: lambda p, t: p.break_control(t, "continue", ContinueNode),
    Tok.ELSE: Parser.else_control,
    Tok.END: Parser.end_control,
    Tok.IF: lambda p, t: p.control(IfNode, "if", t),
    Tok.RANGE: lambda p, t: p.control(RangeNode, "range", t),
    Tok.TEMPLATE: Parser.template_control,
    Tok.WITH: lambda p, t: p.control(WithNode, "with", t),
}


def _is_empty(tree: ListNode) -> bool:
    for n in tree.nodes:
        if isinstance(n, TextNode) and n.text.strip() == "":
            continue
        if isinstance(n, CommentNode):
            continue
        return False
    return True


def parse(text: str, name: str, funcs: set[str]) -> dict[str, ListNode]:
    """Parse `text`; returns the tree of `name` and of every template it defines.

    A text over MAX_TEMPLATE_SIZE characters, or nested over MAX_NESTING_DEPTH, is a TemplateError."""
    if len(text) > MAX_TEMPLATE_SIZE:
        raise TemplateError(f"template too large: {len(text)} characters, the limit is {MAX_TEMPLATE_SIZE}",
                            name=name)
    return Parser(text, name, funcs).parse()
