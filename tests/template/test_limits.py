"""Hostile templates meet limits: nothing is evaluated at compile time, nesting and size are
bounded, and the failures are TemplateErrors naming the limit (never RecursionError)."""

from __future__ import annotations

import threading
import time
import tracemalloc

import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest
from jinja2 import meta

from pollama.create.capabilities import model_capabilities
from pollama.template import goparse
from pollama.template import jinja as J
from pollama.template import jinja_bounds, jinja_sandbox
from pollama.template.errors import TemplateError
from pollama.template.golex import lex
from pollama.template.gotemplate import Template, capabilities, parse_cached, thinking_tags, tool_call_tag
from pollama.template.named import all_named
from pollama.template.prompt import chat_prompt, generate_prompt

DEPTH = goparse.MAX_NESTING_DEPTH


def nested(kind: str, depth: int) -> str:
    """A Go template nesting `kind` `depth` levels deep, whose innermost level writes .Response."""
    if kind == "paren":
        return "{{" + "(" * depth + "print .Response" + ")" * depth + "}}"
    if kind == "else-if":
        return "{{if false}}" + "{{else if false}}" * (depth - 1) + "{{else}}{{.Response}}{{end}}"
    if kind == "block":
        return "".join(f'{{{{block "b{i}" .}}}}' for i in range(depth)) + "{{.Response}}" + "{{end}}" * depth
    opening = {"if": "{{if true}}", "range": "{{range $.Messages}}", "with": "{{with $.Messages}}"}[kind]
    return opening * depth + "{{$.Response}}" + "{{end}}" * depth


KINDS = ["if", "range", "with", "else-if", "block", "paren"]


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- Go templates


@pytest.mark.parametrize("kind", KINDS)
def test_go_nesting_up_to_the_limit_parses_executes_and_is_walked(kind):
    text = nested(kind, DEPTH)
    data = {"Messages": [{"Role": "user", "Content": "hi"}], "Response": "R"}

    def everything() -> None:
        tmpl = Template.parse(text)
        tmpl.vars(), capabilities(tmpl), thinking_tags(tmpl), tool_call_tag(tmpl)
        tmpl.without_after_response()
        tmpl.execute(data)
        chat_prompt(text, [{"role": "user", "content": "hi"}], count_tokens=len, num_ctx=4096, truncate=True)
        generate_prompt(text, "hi", count_tokens=len, num_ctx=4096)

    everything()
    # In a worker thread (as the server runs it) with frames already on the stack, too.
    errors: list[BaseException] = []

    def deep(n: int) -> None:
        if n:
            return deep(n - 1)
        try:
            everything()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=deep, args=(100,))
    worker.start()
    worker.join()
    assert not errors, errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [DEPTH + 1, 1000, 5000])
def test_go_nesting_over_the_limit_is_a_template_error_naming_it(kind, depth):
    started = time.monotonic()
    with pytest.raises(TemplateError, match=f"nested too deeply: more than {DEPTH} levels"):
        Template.parse(nested(kind, depth))
    assert time.monotonic() - started < 2


def test_the_built_in_templates_nest_well_inside_the_limit():
    deepest = 0
    enter = goparse.Parser.enter

    def track(self, tok=None):
        nonlocal deepest
        enter(self, tok)
        deepest = max(deepest, self.depth)

    goparse.Parser.enter = track
    try:
        for named in all_named():
            Template.parse(named.template)
    finally:
        goparse.Parser.enter = enter
    assert 0 < deepest <= DEPTH // 4


def test_a_go_template_over_the_size_limit_is_refused_before_lexing():
    text = "{{if true}}" * 20000 + "x" + "{{end}}" * 20000  # 360 KB: half a minute of parsing before
    assert len(text) > goparse.MAX_TEMPLATE_SIZE
    started = time.monotonic()
    with pytest.raises(TemplateError, match="template too large"):
        Template.parse(text)
    assert time.monotonic() - started < 0.5


def test_lexing_is_linear():
    # Counting lines from the start for every token made this quadratic (9 s for 360 KB).
    text = ("{{ if .System }}<|system|>\n{{ .System }}\n{{ end }}" * 5000)[: goparse.MAX_TEMPLATE_SIZE]
    started = time.monotonic()
    tokens = lex(text)
    assert time.monotonic() - started < 2
    assert tokens[-1].line == text.count("\n") + 1
    assert [t.line for t in tokens] == sorted(t.line for t in tokens)


def test_recursive_template_calls_stop_at_the_execution_depth():
    text = '{{define "a"}}' + "{{if true}}" * (DEPTH - 1) + '{{template "a" .}}' + "{{end}}" * (DEPTH - 1) \
        + '{{end}}{{template "a" .}}{{.Response}}'
    started = time.monotonic()
    with pytest.raises(TemplateError, match="too deep|maximum template depth"):
        Template.parse(text).execute({"Response": ""})
    assert time.monotonic() - started < 2


def test_parse_cached_shares_one_parse():
    text = "{{ range .Messages }}{{ .Content }}{{ end }}"
    assert parse_cached(text) is parse_cached(text)


# ---------------------------------------------------------------- Jinja chat templates

BOMBS = ["{{ 'a' * 10**10 }}", "{{ 7 ** 30000000 }}", "{{ 'a'|center(1000000000) }}",
         "{% set x = 'a'|center(1000000000) %}{{ x }}", "{{ ('a'|center(1000000000))|length }}{{ tools }}"]


@pytest.mark.parametrize("source", BOMBS)
def test_capabilities_of_a_jinja_bomb_evaluate_nothing(source):
    metadata = {"general.architecture": "llama", "tokenizer.chat_template": source}
    started = time.monotonic()
    assert peak_bytes(lambda: model_capabilities(metadata, None)) < 5 << 20
    assert time.monotonic() - started < 1
    assert ("tools" in model_capabilities(metadata, None)) == ("tools" in source)


@pytest.mark.parametrize("source", BOMBS)
def test_compiling_a_jinja_bomb_evaluates_nothing(source):
    started = time.monotonic()
    assert peak_bytes(lambda: J.ChatTemplate(source)) < 20 << 20
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("source", "error"), [
    ("{{ 'a' * 10**9 }}", "repetition too large"),
    ("{{ 7 ** 30000000 }}", "power too large"),
])
def test_rendering_a_jinja_bomb_is_refused(source, error):
    with pytest.raises(TemplateError, match=error):
        J.render_chat_template(source, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("source", [
    "{% if true %}" * 10000 + "x" + "{% endif %}" * 10000,
    "{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}",
    "{{ " + "[" * 20000 + "]" * 20000 + " }}",
    "{% for m in messages %}" * 100 + "x" + "{% endfor %}" * 100,  # over Python's compile limits
])
def test_deep_jinja_is_a_template_error(source):
    started = time.monotonic()
    with pytest.raises(TemplateError, match="nested"):
        J.ChatTemplate(source)
    assert model_capabilities({"tokenizer.chat_template": source}, None) == ["completion"]
    assert time.monotonic() - started < 5


def test_a_jinja_template_over_the_size_limit_is_refused():
    source = "x" * (J.MAX_TEMPLATE_SIZE + 1)
    with pytest.raises(TemplateError, match="chat template too large"):
        J.ChatTemplate(source)
    with pytest.raises(TemplateError, match="chat template too large"):
        J.template_variables(source)


def test_the_sandbox_compiles_without_folding():
    assert J._ENV.optimized is False
    code = J._ENV.compile("{{ 'ab'|upper }}{{ 1 + 2 }}", raw=True)
    assert "'AB'" not in code and "3" not in code.replace("'", "")  # both left for run time
    assert J.render_chat_template("{{ 'ab'|upper }}{{ 1 + 2 }}{{ none }}", []) == "AB3None"


SCOPING = [
    "{% macro m(a, b=c) %}{{ a }}{{ b }}{{ d }}{{ caller() if caller }}{% endmacro %}{{ m(1) }}",
    "{% call(x) m(y) %}{{ x }}{{ z }}{% endcall %}",
    "{% with a = b, c = a %}{{ a }}{{ c }}{{ e }}{% endwith %}{{ a }}",
    "{% set x %}{{ y }}{% endset %}{{ x }}",
    "{% set ns = namespace(v=0) %}{% for m in messages %}{% set ns.v = ns.v + 1 %}{% set q = m %}{% endfor %}{{ q }}",
    "{% for m in messages %}{{ loop.index }}{% else %}{{ m }}{{ loop }}{% endfor %}",
    "{% for a, b in items if b %}{{ a }}{% endfor %}{{ a }}",
    "{% filter upper %}{{ x }}{% endfilter %}",
    "{% if x %}{% set t = 1 %}{% elif y %}{% set t = 2 %}{% else %}{% set t = 3 %}{% endif %}{{ t }}",
    "{% set t = 0 %}{% if x %}{% set t = 1 %}{% endif %}{{ t }}",
    "{% for m in messages %}{% if m %}{% set k = 1 %}{% endif %}{{ k }}{% endfor %}",
    "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}{{ tools }}",
    "{% set tools = tools or [] %}{{ tools }}",
    "{% set tools = [] %}{{ tools }}",
    "{% for x in y recursive %}{{ loop(x.c) }}{% endfor %}",
    "{% generation %}{{ g }}{% endgeneration %}",
    "{% for m in messages %}{% break %}{% endfor %}{{ raise_exception('x') }}{{ strftime_now('%Y') }}",
    "{{ a.b[c] }}{{ d is defined }}{{ e if f else g }}{{ self }}{{ range(3) }}{{ namespace() }}",
    "{% macro f() %}{% set inner = 1 %}{{ inner }}{% endmacro %}{{ inner }}",
]


@pytest.mark.parametrize("source", SCOPING)
def test_template_variables_are_jinjas_undeclared_variables(source):
    reference = jinja2.sandbox.ImmutableSandboxedEnvironment(
        extensions=[jinja_sandbox._GenerationBlock, jinja2.ext.loopcontrols])
    reference.globals.update(J._ENV.globals)
    assert J.template_variables(source) == meta.find_undeclared_variables(reference.parse(source))


# ---------------------------------------------------------------- Jinja render sizes

CHARS = jinja_bounds.MAX_RENDER_CHARS
MIB = 1 << 20


def refused(source: str, match: str, messages: list | None = None) -> tuple[int, float]:
    """Render `source`, which must fail with a TemplateError matching `match`: its peak memory
    (bytes, tracemalloc) and seconds."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TemplateError, match=match):
            J.render_chat_template(source, messages or [{"role": "user", "content": "hi"}])
        return tracemalloc.get_traced_memory()[1], time.monotonic() - started
    finally:
        tracemalloc.stop()


SHARED = "{% set x = ['a' * 100000] * 100000 %}"  # short to hold, 10 G characters to show
# (template, the peak memory (MiB) it may reach before it is refused): each built ~200 MB (the
# shared ones 10 GB, the lipsum one after minutes of CPU) before the limit.
TEXT_BOMBS = {
    "center": ("{{ 'a'|center(200000000) }}", 1),
    "join": ("{{ range(2000)|join('a' * 100000) }}", 1),
    "format": ("{{ '%200000000d'|format(1) }}", 1),
    "percent": ("{{ '%200000000d' % 1 }}", 1),
    "percent-star": ("{{ '%*d' % (200000000, 1) }}", 1),
    "percent-precision": ("{{ '%.200000000f' % 1.0 }}", 1),
    "percent-many": ("{{ ('%s' * 50000) % (('a' * 100000,) * 50000) }}", 1.5),
    "str-format": ("{{ '{:>200000000}'.format(1) }}", 1),
    "str-format-precision": ("{{ '{:.200000000f}'.format(1.0) }}", 1),
    "str-format-nested-width": ("{{ '{:{}}'.format(1, 200000000) }}", 1),
    "str-format-many": ("{{ ('{0}' * 30000).format('a' * 100000) }}", 1),
    "str-format-repr": ("{{ '{0!r}'.format(['a' * 100000] * 100000) }}", 1.5),
    "output": ("{% for i in range(2000) %}{{ 'a' * 100000 }}{% endfor %}", 1.1 * CHARS / MIB),
    "tilde-doubling": ("{% set ns = namespace(s='a') %}{% for i in range(27) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}", 2.1 * CHARS / MIB),
    "plus-doubling": ("{% set ns = namespace(s='a') %}{% for i in range(27) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", 2.1 * CHARS / MIB),
    "set-block": ("{% set s %}{% for i in range(2000) %}{{ 'a' * 100000 }}{% endfor %}{% endset %}", 1.1 * CHARS / MIB),
    "macro": ("{% macro m() %}{% for i in range(2000) %}{{ 'a' * 100000 }}{% endfor %}{% endmacro %}{{ m()|length }}",
              1.1 * CHARS / MIB),
    "ljust": ("{{ 'a'.ljust(200000000) }}", 1),
    "rjust": ("{{ 'a'.rjust(200000000) }}", 1),
    "str-center": ("{{ 'a'.center(200000000) }}", 1),
    "zfill": ("{{ '1'.zfill(200000000) }}", 1),
    "expandtabs": ("{{ ('\t' * 2000).expandtabs(100000) }}", 1),
    "str-join": ("{{ ('a' * 100000).join(range(2000)|map('string')) }}", 1),
    "str-replace": ("{{ ('a' * 2000).replace('', 'b' * 100000) }}", 1),
    "replace": ("{{ ('a' * 2000)|replace('', 'b' * 100000) }}", 1),
    "translate": ("{{ ('a' * 2000).translate({97: 'b' * 100000}) }}", 1),
    "indent-width": ("{{ 'x'|indent(200000000, true) }}", 1),
    "indent-lines": ("{{ ('x\n' * 2000)|indent(100000) }}", 1),
    "wordwrap": ("{{ ('a ' * 50000)|wordwrap(1, wrapstring='b' * 4000) }}", 1),
    "lipsum": ("{{ lipsum(n=20000, min=999, max=1000) }}", 1),
    "tojson-indent": ("{{ [[[1]]]|tojson(indent=100000000) }}", 1),
    "to-bytes": ("{{ (1).to_bytes(300000000, 'big') }}", 1),
    "output-shared": (SHARED + "{{ x }}", 1.5),
    "string-shared": (SHARED + "{{ x|string }}", 1.5),
    "tilde-shared": (SHARED + "{{ '' ~ x }}", 1.5),
    "escape-shared": (SHARED + "{{ x|e }}", 1.5),
    "join-shared": (SHARED + "{{ [x, x]|join }}", 1.5),
    "tojson-shared": (SHARED + "{{ x|tojson }}", 1.5),
    "pprint-shared": (SHARED + "{{ x|pprint }}", 1.5),
}


@pytest.mark.parametrize("name", TEXT_BOMBS)
def test_a_jinja_text_bomb_is_refused_before_it_is_built(name):
    source, peak_mib = TEXT_BOMBS[name]
    peak, seconds = refused(source, f"MAX_RENDER_CHARS \\({CHARS}\\)")
    assert peak < peak_mib * MIB
    assert seconds < 2


@pytest.mark.parametrize(("source", "error"), [
    ("{{ 'a'.encode() * 300000000 }}", "repetition too large"),
    ("{{ (((7 ** 1000) ** 1000) ** 100) }}", "MAX_INT_BITS"),  # was minutes of CPU and 350 MB
    ("{{ (7 ** 1000) * (7 ** 1000) * (7 ** 1000) * (7 ** 1000) * (7 ** 1000) }}", "MAX_INT_BITS"),
    ("{% for i in range(10 ** 9) %}{% endfor %}", "MAX_RANGE"),
    ("{{ ([1] * 10 ** 9)|length }}", "repetition too large"),
    ("{% set l = [] %}{{ l.append(1) }}", "unsafe"),
])
def test_other_jinja_bombs_are_refused(source, error):
    peak, seconds = refused(source, error)
    assert peak < 1 * MIB
    assert seconds < 2


# Templates that keep many values, each within MAX_RENDER_CHARS, 40 MB or more here: the render's
# budget (16 MiB here) stops them. Without it they hold what the clock allows: 600 values of
# 1 MB (600 MB) take well under 5 s, and the lists of slots reach 1.5 GB to 3 GB.
BUDGET_BOMBS = {
    "list": "{% set ns = namespace(l=[]) %}{% for i in range(40) %}"
            "{% set ns.l = ns.l + ['a'|center(1000000 + i)] %}{% endfor %}",
    "variables": "".join("{%% set v%d = 'a'|center(%d) %%}" % (i, 1000000 + i) for i in range(40)),
    "recursion": "{% macro f(n, s) %}{% if n %}{{ f(n - 1, s ~ 'x') }}{% endif %}{% endmacro %}"
                 "{{ f(40, 'a'|center(1000000)) }}",
    "split-pieces": "{% set ns = namespace(l=[]) %}{% for i in range(40) %}"
                    "{% set ns.l = ns.l + [('a'|center(1000000 + i)).split('b')] %}{% endfor %}",
    "batch-fill": "{{ [1]|batch(100000000, 0)|list|length }}",
    "slice-many": "{{ range(10)|slice(30000000)|list|length }}",  # 64 bytes an empty list: slow to fill
    "list-of-chars": "{{ ('é'|center(4000000))|list|list|list|list|list|length }}",
    "sum-of-lists": "{% set x = [[0] * 100000] * 1000 %}{{ x|sum(start=[])|length }}",
    "spread-arguments": "{% set ns = namespace(l=[]) %}{% set x = range(30000)|list %}{% for i in range(100) %}"
                        "{% set ns.l = ns.l + [cycler(*x)] %}{% endfor %}",
    "namespaces": "{% set d = {}.fromkeys(range(30000)) %}{% set ns = namespace(l=[]) %}{% for i in range(100) %}"
                  "{% set ns.l = ns.l + [namespace(d)] %}{% endfor %}",
}


@pytest.mark.parametrize("name", BUDGET_BOMBS)
def test_a_jinja_template_holding_too_much_is_refused(name, monkeypatch):
    # The same at 256 MiB, 16 (128) times as long.
    monkeypatch.setattr(jinja_bounds, "MAX_RENDER_BYTES", (2 if name == "slice-many" else 16) * MIB)
    peak, seconds = refused(BUDGET_BOMBS[name], "MAX_RENDER_BYTES")
    assert peak < 1.2 * jinja_bounds.MAX_RENDER_BYTES + MIB
    assert seconds < 2


def test_what_a_render_drops_stops_counting(monkeypatch):
    # 100 strings of 1 MB built one after another, each garbage at the next: 100 MB in all,
    # over the budget were they counted for good (the pattern of ns.s = ns.s ~ part).
    monkeypatch.setattr(jinja_bounds, "MAX_RENDER_BYTES", 8 * MIB)
    source = ("{% set big = 'a'|center(1000000) %}{% set ns = namespace(s='', l=[]) %}"
              "{% for i in range(100) %}{% set ns.s = big ~ i %}{% endfor %}{{ ns.s|length }}")
    assert J.render_chat_template(source, []) == "1000002"
    with pytest.raises(TemplateError, match="MAX_RENDER_BYTES"):  # kept, they add up
        J.render_chat_template(source.replace("{% set ns.s = big ~ i %}", "{% set ns.l = ns.l + [big ~ i] %}"), [])


def test_the_longest_prompt_renders_and_a_longer_one_is_refused():
    # Within the limit every step of a real template fits (UCS-4 text takes 4 bytes a character).
    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content']|trim + '<|im_end|>\\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    content = ("lorem ipsum 😀 " * (CHARS // 14))[: CHARS - 100]
    text = J.render_chat_template(chatml, [{"role": "user", "content": content}], add_generation_prompt=True)
    assert text == f"<|im_start|>user\n{content.strip()}<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TemplateError, match="MAX_RENDER_CHARS"):
        J.render_chat_template(chatml, [{"role": "user", "content": content + "x" * 200}])


def test_text_bombs_are_refused_outside_a_render_budget_too():
    # Only MAX_RENDER_CHARS applies outside ChatTemplate.render (no budget, no clock).
    template = J._ENV.from_string("{{ 'a'|center(200000000) }}")
    with pytest.raises(jinja2.exceptions.SecurityError, match="MAX_RENDER_CHARS"):
        template.render()
