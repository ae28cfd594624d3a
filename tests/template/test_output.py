"""A chat answer split into thinking, content and tool calls, and the OpenAI shape of tool calls."""

from __future__ import annotations

import json

import pytest
from realmodels import real_model

from pollama.template import ChatOutputParser, to_openai_tool_calls
from pollama.template.gotemplate import Template
from pollama.template.output import arguments_json, openai_finish_reason, think_enabled

# A Qwen3-like template: thinking tags and a <tool_call> tag, and the think block opened by the
# template when thinking is on.
QWEN3 = """
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $last .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}
{{- if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>{{ else }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if $.Think }}<think>
{{ end }}{{ end }}
{{- end }}"""
CHATML_JSON_TOOLS = "{{ range .Messages }}{{ .Content }}{{ if .ToolCalls }}{{ range .ToolCalls }}{{ .Function }}{{ end }}{{ end }}{{ end }}"
QWEN25_JINJA = ("{%- for message in messages %}{%- if message.tool_calls %}{{- '<tool_call>\\n' }}"
                "{%- endif %}{%- endfor %}{{- '<|im_start|>assistant\\n' }}")

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def fixed_id():
    return "call_abcd1234"


def run(parser: ChatOutputParser, pieces) -> dict:
    """All deltas of `pieces` and the finish, joined."""
    total = {"thinking": "", "content": "", "tool_calls": []}
    for delta in [parser.add(p) for p in pieces] + [parser.finish()]:
        assert set(delta) == {"thinking", "content", "tool_calls"}
        total["thinking"] += delta["thinking"]
        total["content"] += delta["content"]
        total["tool_calls"] += delta["tool_calls"]
    return total


def chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.parametrize("split", [lambda t: [t], chars])
def test_thinking_then_tool_call(split):
    parser = ChatOutputParser(Template.parse(QWEN3), WEATHER, think=True, new_id=fixed_id)
    out = run(parser, split('<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n'
                            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'))
    assert out == {"thinking": "The user wants weather.\n", "content": "", "tool_calls": [
        {"id": "call_abcd1234", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert parser.tool_calls == out["tool_calls"]


def test_prompt_that_opens_the_think_block():
    tmpl = Template.parse(QWEN3)
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    parser = ChatOutputParser(tmpl, think="high", prompt=prompt)
    assert parser.add("Greeting.") == {"thinking": "Greeting.", "content": "", "tool_calls": []}
    assert parser.add("</think>\n\nHello!") == {"thinking": "", "content": "Hello!", "tool_calls": []}
    assert parser.finish() == {"thinking": "", "content": "", "tool_calls": []}


@pytest.mark.parametrize("think", [None, False, "none", ""])
def test_thinking_off_leaves_tags_in_the_content(think):
    parser = ChatOutputParser(Template.parse(QWEN3), think=think)
    assert parser.thinking is None
    assert run(parser, ["<think>a</think>b"])["content"] == "<think>a</think>b"


def test_thinking_on_without_tags_is_plain_content():
    parser = ChatOutputParser(Template.parse(CHATML_JSON_TOOLS), think=True)
    assert parser.thinking_tags is None
    assert run(parser, ["<think>a</think>b"])["content"] == "<think>a</think>b"


def test_no_tools_means_no_tool_parsing():
    parser = ChatOutputParser(Template.parse(QWEN3), None)
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert run(parser, chars(text)) == {"thinking": "", "content": text, "tool_calls": []}


def test_bare_json_tools_and_plain_answers():
    parser = ChatOutputParser(Template.parse(CHATML_JSON_TOOLS), WEATHER, new_id=fixed_id)
    assert parser.tools.tag == "{"
    out = run(parser, chars('{"name": "get_weather", "parameters": {"city": "Oslo"}}'))
    assert [c["function"]["arguments"] for c in out["tool_calls"]] == [{"city": "Oslo"}]
    plain = ChatOutputParser(Template.parse(CHATML_JSON_TOOLS), WEATHER)
    assert run(plain, chars("It is sunny {probably}.")) == {"thinking": "", "content": "It is sunny {probably}.",
                                                            "tool_calls": []}
    unfinished = ChatOutputParser(Template.parse(CHATML_JSON_TOOLS), WEATHER)
    assert run(unfinished, chars('{"answer": ')) == {"thinking": "", "content": '{"answer": ', "tool_calls": []}


def test_content_before_a_tool_call_and_thinking_after_a_held_tag():
    parser = ChatOutputParser(Template.parse(QWEN3), WEATHER, think=True, new_id=fixed_id)
    out = run(parser, ["<think>x</th", "ink>Let me check. <tool", "_call>", '{"name": "get_weather", ',
                       '"arguments": {"city": "Rome"}}', "</tool_call>"])
    assert out["thinking"] == "x"
    assert out["content"] == "Let me check. "
    assert [c["function"]["name"] for c in out["tool_calls"]] == ["get_weather"]


def test_a_tag_that_never_completes_is_content():
    parser = ChatOutputParser(Template.parse(QWEN3), WEATHER, think=True)
    assert run(parser, ["<think>a</think>See <tool_c"]) == {"thinking": "a", "content": "See <tool_c", "tool_calls": []}


def test_jinja_only_models():
    parser = ChatOutputParser(None, WEATHER, think=True, chat_template=QWEN25_JINJA, new_id=fixed_id)
    assert parser.tools.tag == "<tool_call>"
    assert parser.thinking is None  # this Jinja template writes no think tags
    out = run(parser, chars('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'))
    assert len(out["tool_calls"]) == 1
    thinker = ChatOutputParser(None, None, think=True, chat_template="{{ '<think>' }}...{{ '</think>' }}",
                               prompt="...<think>\n")
    assert run(thinker, ["hmm</think>ok"]) == {"thinking": "hmm", "content": "ok", "tool_calls": []}


def test_overrides_and_template_text():
    parser = ChatOutputParser(QWEN3, WEATHER, think=True, thinking_tags=("[T]", "[/T]"), tool_tag="CALL:")
    out = run(parser, ['[T]a[/T]CALL:{"name": "get_weather", "arguments": {"city": "X"}}'])
    assert out["thinking"] == "a"
    assert out["tool_calls"][0]["function"]["arguments"] == {"city": "X"}


@pytest.mark.parametrize(("think", "on"), [
    (True, True), ("low", True), ("medium", True), ("high", True), ("max", True),
    (False, False), (None, False), ("none", False), ("", False), ("true", False), (1, False),
])
def test_think_values(think, on):
    assert think_enabled(think) is on


# ---------------------------------------------------------------- OpenAI


def test_openai_tool_calls():
    calls = [
        {"id": "call_aaaa0000", "function": {"index": 0, "name": "get_weather",
                                             "arguments": {"city": "Paris", "units": {"z": 1, "a": 2.0}}}},
        {"id": "call_bbbb1111", "function": {"index": 1, "name": "noop", "arguments": {}}},
    ]
    assert to_openai_tool_calls(calls) == [
        {"id": "call_aaaa0000", "index": 0, "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris","units":{"a":2,"z":1}}'}},
        {"id": "call_bbbb1111", "index": 1, "type": "function", "function": {"name": "noop", "arguments": "{}"}},
    ]
    assert list(to_openai_tool_calls(calls)[0]) == ["id", "index", "type", "function"]


def test_arguments_json_is_go_json():
    args = {"z": "<b>&", "a": [1, 1.5, None, True], "é": "ü"}
    text = arguments_json(args)
    assert text == '{"z":"\\u003cb\\u003e\\u0026","a":[1,1.5,null,true],"é":"ü"}'
    assert json.loads(text) == args


@pytest.mark.parametrize(("reason", "sent", "want"), [
    ("stop", True, "tool_calls"), ("stop", False, "stop"), ("length", True, "length"),
    (None, True, "tool_calls"), ("", False, "stop"),
])
def test_finish_reason(reason, sent, want):
    assert openai_finish_reason(reason, sent) == want


# ---------------------------------------------------------------- a real model


def test_qwen_coder_calls_the_weather_tool():
    """Qwen2.5-Coder-0.5B, prompted by its GGUF chat template with a weather tool, makes a parsed call."""
    from pollama.runner.parallel import ParallelEngine
    from pollama.runner.generation import GenerateOptions, Piece
    from pollama.template.prompt import jinja_chat_prompt

    weather = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]}}}]
    with ParallelEngine(real_model("qwen2.5-coder-0.5b"), num_ctx=512, num_thread=2) as engine:
        chat_template = engine.engine.gguf.metadata["tokenizer.chat_template"]
        prompt, _ = jinja_chat_prompt(chat_template, [{"role": "user", "content": "What is the weather in Paris?"}],
                                      tools=weather, truncate=False)
        parser = ChatOutputParser(None, weather, chat_template=chat_template)
        assert parser.tools.tag == "<tool_call>"
        out = {"thinking": "", "content": "", "tool_calls": []}
        for event in engine.submit(engine.tokenizer.encode(prompt), GenerateOptions(num_predict=64)):
            if isinstance(event, Piece):
                delta = parser.add(event.text)
                out["content"] += delta["content"]
                out["tool_calls"] += delta["tool_calls"]
        out["content"] += parser.finish()["content"]
    assert [c["function"]["name"] for c in out["tool_calls"]] == ["get_weather"]
    assert out["tool_calls"][0]["function"]["arguments"]["city"].startswith("Paris")
    assert out["content"] == ""
    [openai] = to_openai_tool_calls(out["tool_calls"])
    assert json.loads(openai["function"]["arguments"])["city"].startswith("Paris")
