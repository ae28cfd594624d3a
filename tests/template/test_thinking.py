"""Thinking split from streamed output, and thinking tags inferred from templates (Ollama's thinking/)."""

from __future__ import annotations

import pytest

from pollama.template.gotemplate import Template
from pollama.template.thinking import (
    ThinkingParser,
    ThinkingState,
    infer_thinking_tags,
    jinja_thinking_tags,
)

S = ThinkingState

# Ollama's TestExtractThinking: one whole output -> (thinking, content).
WHOLE_OUTPUTS = [
    ("<think> internal </think> world", "internal ", "world"),
    ("<think>a</think><think>b</think>c", "a", "<think>b</think>c"),
    ("no think", "", "no think"),
]

# Ollama's TestThinkingStreaming: per step (piece, thinking, content, state after).
STREAMS = {
    "content without a thinking tag": [
        ("  abc", "", "  abc", S.THINKING_DONE),
        # once decided, earlier text is not sent again
        ("def", "", "def", S.THINKING_DONE),
    ],
    "content before a thinking tag nerfs the thinking tag": [
        ("  abc <think>def</think> ghi", "", "  abc <think>def</think> ghi", S.THINKING_DONE),
    ],
    "building up a thinking tag partially": [
        ("  <th", "", "", S.LOOKING_FOR_OPENING),
        ("in", "", "", S.LOOKING_FOR_OPENING),
        ("k>a", "a", "", S.THINKING),
    ],
    "partial closing tag": [
        ("<think>abc</th", "abc", "", S.THINKING),
        ("ink>def", "", "def", S.THINKING_DONE),
    ],
    "partial closing tag fakeout": [
        ("<think>abc</th", "abc", "", S.THINKING),
        ("ing>def", "</thing>def", "", S.THINKING),
        ("ghi</thi", "ghi", "", S.THINKING),
        ("nk>jkl", "", "jkl", S.THINKING_DONE),
    ],
    "whitespace after thinking tag": [
        ("  <think>abc</think>\n\ndef", "abc", "def", S.THINKING_DONE),
    ],
    "whitespace after thinking tag (incremental)": [
        ("  <think>abc</think>", "abc", "", S.THINKING_DONE_EATING_WHITESPACE),
        ("\n\ndef", "", "def", S.THINKING_DONE),
    ],
    "whitespace after thinking tag with content and more whitespace": [
        ("  <think>abc</think>\n\ndef ", "abc", "def ", S.THINKING_DONE),
        (" ghi", "", " ghi", S.THINKING_DONE),
    ],
    "token by token": [
        ("<think>", "", "", S.THINKING_STARTED_EATING_WHITESPACE),
        ("\n", "", "", S.THINKING_STARTED_EATING_WHITESPACE),
        ("</think>", "", "", S.THINKING_DONE_EATING_WHITESPACE),
        ("\n\n", "", "", S.THINKING_DONE_EATING_WHITESPACE),
        ("Hi", "", "Hi", S.THINKING_DONE),
        (" there", "", " there", S.THINKING_DONE),
    ],
    "leading thinking whitespace": [
        ("  <think>   \t ", "", "", S.THINKING_STARTED_EATING_WHITESPACE),
        ("  these are some ", "these are some ", "", S.THINKING),
        ("thoughts </think>  ", "thoughts ", "", S.THINKING_DONE_EATING_WHITESPACE),
        ("  more content", "", "more content", S.THINKING_DONE),
    ],
}


@pytest.mark.parametrize(("text", "thinking", "content"), WHOLE_OUTPUTS)
def test_whole_output_is_split(text, thinking, content):
    assert ThinkingParser().add(text) == (thinking, content)


@pytest.mark.parametrize("name", list(STREAMS))
def test_streamed_output_is_split_step_by_step(name):
    parser = ThinkingParser("<think>", "</think>")
    for i, (piece, thinking, content, state) in enumerate(STREAMS[name]):
        assert parser.add(piece) == (thinking, content), f"step {i}"
        assert parser.state is state, f"step {i}"


def _split_every_way(text: str, opening="<think>", closing="</think>", started=False):
    """(thinking, content) of `text` fed one character at a time, then finished."""
    parser = ThinkingParser(opening, closing, started=started)
    thinking, content = [], []
    for ch in text:
        t, c = parser.add(ch)
        thinking.append(t)
        content.append(c)
    t, c = parser.finish()
    return "".join(thinking) + t, "".join(content) + c


@pytest.mark.parametrize(("text", "thinking", "content"), [
    *WHOLE_OUTPUTS,
    ("  <think>abc</think>\n\ndef ghi", "abc", "def ghi"),
    ("<think>abc</thing>def</think>x", "abc</thing>def", "x"),
    ("\n<think>\nplan\n</think>\n\nAnswer.\n", "plan\n", "Answer.\n"),
])
def test_one_character_at_a_time_gives_the_same_split(text, thinking, content):
    assert _split_every_way(text) == (thinking, content)


def test_a_prompt_that_opened_the_block_starts_inside_it():
    # Ollama feeds the opening tag when the rendered prompt ends with it.
    parser = ThinkingParser(started=True)
    assert parser.state is S.THINKING_STARTED_EATING_WHITESPACE
    assert parser.add("\nLet me see.") == ("Let me see.", "")
    assert parser.add("</think>\n\nParis.") == ("", "Paris.")


def test_a_model_that_repeats_the_opened_tag_thinks_it_as_text():
    # As Ollama: once inside the block, a second opening tag is thinking text.
    parser = ThinkingParser(started=True)
    assert parser.add("<think>x</think>y") == ("<think>x", "y")


def test_custom_tags():
    parser = ThinkingParser("<|begin_of_thought|>", "<|end_of_thought|>")
    assert parser.add("<|begin_of_thought|>hmm<|end_of") == ("hmm", "")
    assert parser.add("_thought|> ok") == ("", "ok")


def test_go_whitespace_only_is_trimmed():
    # \x1c is whitespace to Python's strip but not to Go's unicode.IsSpace.
    assert ThinkingParser().add("\x1c<think>a</think>b") == ("", "\x1c<think>a</think>b")
    assert ThinkingParser().add("\u3000<think>a</think>\xa0b") == ("a", "b")


@pytest.mark.parametrize(("pieces", "finished"), [
    (["  "], ("", "  ")),               # blank output before any tag: content
    (["<thi"], ("", "<thi")),           # an opening tag that never came: content
    (["<think>abc</th"], ("</th", "")),  # a closing tag that never came: thinking
    (["<think>\n"], ("", "")),          # whitespace after the opening tag is eaten
    (["<think>a</think>\n"], ("", "")),  # whitespace after the closing tag is eaten
    (["abc"], ("", "")),
])
def test_finish_hands_out_what_was_held(pieces, finished):
    parser = ThinkingParser()
    for piece in pieces:
        parser.add(piece)
    assert parser.finish() == finished
    assert parser.finish() == ("", "")


def test_empty_tags_are_refused():
    with pytest.raises(ValueError):
        ThinkingParser("", "</think>")


# ---------------------------------------------------------------- tags from templates

# Ollama's TestInferThinkingTags: (template, opening, closing); "" as Ollama's "no tag".
QWEN3 = """
{{- if or .System .Tools .Thinking }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}
{{- if .Thinking }}
/think
{{- else }}
/no_think
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $last .Thinking }}
<think>{{ .Thinking }}</think>
{{ end }}
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
"""

TAG_TEMPLATES = {
    "basic": ("""
            {{ if .Thinking}}
                /think
            {{ end }}
            {{- range $i, $_ := .Messages }}
                {{- $last := eq (len (slice $.Messages $i)) 1 -}}
                {{ if and $last .Thinking }}
                    <think>{{ .Thinking }}</think>
                {{ end }}
            {{ end }}
        """, "<think>", "</think>"),
    "doubly nested range": ("""
            {{ if .Thinking}}
                /think
            {{ end }}
            {{- range $i, $_ := .Messages }}
                {{- range $j, $_ := .NotMessages }}
                    {{- $last := eq (len (slice $.Messages $i)) 1 -}}
                    {{ if and $last .Thinking }}
                        <think>{{ .Thinking }}</think>
                    {{ end }}
                {{ end }}
            {{ end }}
        """, "", ""),
    "whitespace is trimmed": ("""
            {{ if .Thinking}}
                /think
            {{ end }}
            {{- range $i, $_ := .Messages }}
                {{- $last := eq (len (slice $.Messages $i)) 1 -}}
                {{ if and $last .Thinking }}
                    Some text before   {{ .Thinking }}    Some text after
                {{ end }}
            {{ end }}
        """, "Some text before", "Some text after"),
    "qwen3": (QWEN3, "<think>", "</think>"),
    "no thinking at all": ("{{ range .Messages }}{{ .Content }}{{ end }}", "", ""),
    "thinking outside a range over messages": ("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}", "", ""),
}


@pytest.mark.parametrize("name", list(TAG_TEMPLATES))
def test_thinking_tags_are_inferred_as_ollama_does(name):
    text, opening, closing = TAG_TEMPLATES[name]
    want = (opening, closing) if opening and closing else None
    assert infer_thinking_tags(Template.parse(text)) == want
    assert infer_thinking_tags(text) == want


def test_no_template_has_no_tags():
    assert infer_thinking_tags(None) is None


@pytest.mark.parametrize(("chat_template", "want"), [
    ("{% if enable_thinking %}<think>\n{% endif %}{{ m.reasoning_content }}</think>", ("<think>", "</think>")),
    ("{{ '<|im_start|>assistant\\n' }}", None),
    ("", None),
    (None, None),
])
def test_jinja_templates_that_write_think_tags(chat_template, want):
    assert jinja_thinking_tags(chat_template) == want
