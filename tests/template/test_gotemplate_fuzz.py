"""Any text either parses or fails with TemplateError; any parsed template renders or fails with TemplateError."""

from __future__ import annotations

import pytest

from pollama.template.gotemplate import Template, TemplateError

import hypothesis
st = hypothesis.strategies

PIECES = [
    "{{", "}}", "{{-", "-}}", " ", "\n", "text", ".", ".Messages", ".Role", ".Content", ".Missing", "$", "$x", "$i",
    ":=", "=", ",", "|", "(", ")", "if", "else", "end", "range", "with", "break", "continue", "define", "template",
    "block", '"T"', "`raw`", "'c'", "1", "-2", "3.5", "0x1F", "true", "nil", "eq", "ne", "lt", "and", "or", "not",
    "len", "index", "slice", "print", "printf", '"%d"', "json", "html", "/*", "*/", "{{/* c */}}", "toTypeScriptType",
]

DATA = {"Messages": [{"Role": "user", "Content": "hi"}, {"Role": "assistant", "Content": "yo"}],
        "System": "s", "Response": "", "N": 2}


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_random_templates_fail_only_with_template_error(pieces):
    text = "".join(pieces)
    try:
        tmpl = Template.parse(text, name="fuzz")
    except TemplateError:
        return
    try:
        out = tmpl.execute(DATA)
    except TemplateError:
        return
    assert isinstance(out, str)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.text(max_size=60))
def test_arbitrary_text_fails_only_with_template_error(text):
    try:
        Template.parse("{{" + text + "}}", name="fuzz").execute(DATA)
    except TemplateError:
        pass


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=80))
def test_plain_text_renders_unchanged(text):
    assert Template.parse(text, ollama=False).execute({}) == text
