"""Ollama's prompt assembly: modes, collation, Values, images, truncation, generate."""

from __future__ import annotations

import pytest
from template_goldens import (
    CONVERSATIONS,
    golden_expected,
    golden_matches,
    golden_names,
)

from pollama.template.gotemplate import Template, thinking_tags, tool_call_tag
from pollama.template.named import named_template
from pollama.template.prompt import (
    Media,
    chat_prompt,
    execute,
    filter_think_tags,
    generate_prompt,
    think_values,
)

CHATML = named_template("chatml").template
# A legacy (pre-.Messages) ChatML template, as older Modelfiles have.
LEGACY_CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("name", golden_names() or ["<absent>"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_chat_prompt_renders_goldens(golden_dir, name, conversation):
    prompt, media = chat_prompt(named_template(name).template, CONVERSATIONS[conversation], truncate=False)
    assert golden_matches(name, prompt, golden_expected(name, conversation))
    assert media == []


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_legacy_mode_renders_the_same_prompt(golden_dir, conversation):
    # Rendered once per finished turn, the open turn cut after .Response.
    prompt, _ = chat_prompt(LEGACY_CHATML, CONVERSATIONS[conversation], truncate=False)
    assert prompt == golden_expected("chatml", conversation)


def test_legacy_mode_ends_the_open_turn_at_response():
    assert execute("[{{ .Prompt }}]{{ .Response }}<end>", messages=[{"role": "user", "content": "q"}]) == "[q]"


def test_collation_merges_same_role_runs_except_tool():
    msgs = [
        {"role": "system", "content": "s1"}, {"role": "system", "content": "s2"},
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"},
    ]
    tmpl = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert execute(tmpl, messages=msgs) == "s1\n\ns2|system=s1\n\ns2;user=a\n\nb;tool=t1;tool=t2;"


def test_values_field_names_and_tool_calls():
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"unit": "C", "city": "Paris"}}}]},
        {"role": "tool", "content": "21", "tool_name": "get_weather"},
    ]
    tmpl = ("{{ range .Messages }}{{ .Role }}"
            "{{ range .ToolCalls }} call {{ .Function.Name }} {{ .Function.Arguments }} {{ json .Function.Arguments }}{{ end }}"
            "{{ with .ToolName }} from {{ . }}{{ end }};{{ end }}")
    # Arguments are a Go map: printed (via String) and marshalled as JSON with sorted keys.
    assert execute(tmpl, messages=msgs) == (
        'user;assistant call get_weather {"city":"Paris","unit":"C"} {"city":"Paris","unit":"C"};tool from get_weather;'
    )


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get <weather>",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "unit": {"type": ["string", "null"], "enum": ["C", "F"]},
        "city": {"type": "string", "description": "City name"}}}}}]


def test_tools_print_and_marshal_as_ollama():
    # templateTool marshals with its JSON tags; properties are a Go map (sorted keys);
    # a tool prints as its JSON; json escapes HTML as Go's encoding/json does.
    tmpl = "{{ range .Tools }}{{ . }}{{ end }}{{ range .Messages }}{{ end }}"  # .Messages mode: .Tools is set
    want = ('{"type":"function","function":{"name":"get_weather","description":"Get \\u003cweather\\u003e",'
            '"parameters":{"type":"object","required":["city"],"properties":{'
            '"city":{"type":"string","description":"City name"},'
            '"unit":{"type":["string","null"],"enum":["C","F"]}}}}}')
    assert execute(tmpl, messages=[{"role": "user", "content": "x"}], tools=TOOLS) == want
    assert execute("{{ json .Tools }}{{ .Messages }}", messages=[], tools=TOOLS) == "[" + want + "][]"


def test_tools_absent_empty_and_typescript():
    # In .Messages mode absent tools are a nil slice that prints as JSON null; legacy
    # templates get no .Tools at all.
    uses_messages = "{{ range .Messages }}{{ end }}"
    assert execute(uses_messages + "{{ .Tools }}|{{ if .Tools }}yes{{ else }}no{{ end }}", messages=[]) == "null|no"
    assert execute(uses_messages + "{{ .Tools }}", messages=[], tools=[]) == "[]"
    assert execute("{{ .Prompt }}{{ .Tools }}", messages=[{"role": "user", "content": "q"}], tools=TOOLS) == "q<no value>"
    tmpl = (uses_messages + "{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}"
            "{{ $k }}: {{ toTypeScriptType $p }}; {{ end }}{{ end }}")
    assert execute(tmpl, messages=[], tools=TOOLS) == "city: string; unit: string | null; "


def test_missing_values_in_messages_mode():
    # .Prompt is not part of the Values in .Messages mode: Go prints <no value>.
    assert execute("{{ .Prompt }}{{ range .Messages }}{{ .Content }}{{ end }}",
                   messages=[{"role": "user", "content": "x"}]) == "<no value>x"


def test_think_values():
    assert think_values(None) == {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    assert think_values(True) == {"Think": True, "ThinkLevel": "medium", "IsThinkSet": True}
    assert think_values(False) == {"Think": False, "ThinkLevel": "", "IsThinkSet": True}
    assert think_values("high") == {"Think": True, "ThinkLevel": "high", "IsThinkSet": True}
    tmpl = "{{ range .Messages }}{{ .Content }}{{ end }}{{ if .Think }}<think>{{ .ThinkLevel }}{{ end }}"
    assert execute(tmpl, messages=[{"role": "user", "content": "q"}], think="low") == "q<think>low"


def test_fill_in_middle_mode():
    tmpl = "<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>"
    prompt, _ = generate_prompt(tmpl, "def f(", suffix="return 1")
    assert prompt == "<PRE>def f(<SUF>return 1<MID>"


def test_images_tagged_and_numbered():
    msgs = [
        {"role": "user", "content": "what is this?", "images": ["AAA"]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "compare [img] and [img]", "images": ["BBB", "CCC"]},
    ]
    prompt, media = chat_prompt("{{ range .Messages }}{{ .Content }}|{{ end }}", msgs, truncate=False)
    assert prompt == "[img-0]what is this?|a cat|compare [img-1] and [img-2]|"
    assert media == [Media(0, "AAA"), Media(1, "BBB"), Media(2, "CCC")]


def test_truncation_drops_oldest_keeping_system_and_last():
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one two three four"},
        {"role": "assistant", "content": "five six seven"},
        {"role": "user", "content": "eight"},
    ]
    tmpl = "{{ range .Messages }}{{ .Content }} {{ end }}"
    full, _ = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=100)
    assert full == "sys one two three four five six seven eight "
    # 9 words do not fit in 6: drop the first user message (keeping the system one)...
    cut, _ = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=5)
    assert cut == "sys five six seven eight "
    # ...and never the last message, even when nothing fits.
    last, _ = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=1)
    assert last == "sys eight "
    untouched, _ = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=1, truncate=False)
    assert untouched == full


def test_truncation_counts_768_tokens_per_image():
    msgs = [
        {"role": "user", "content": "old", "images": ["AAA"]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "new"},
    ]
    tmpl = "{{ range .Messages }}{{ .Content }} {{ end }}"
    kept, media = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=768 + 3)
    assert kept == "[img-0]old ok new " and len(media) == 1
    dropped, media = chat_prompt(tmpl, msgs, count_tokens=words, num_ctx=768 + 2)
    assert dropped == "ok new " and media == []


def test_truncation_needs_a_tokenizer():
    with pytest.raises(ValueError, match="count_tokens"):
        chat_prompt(CHATML, [{"role": "user", "content": "x"}])


def test_roles_are_lower_cased_as_ollama_decodes_them():
    prompt, _ = chat_prompt(CHATML, [{"role": "User", "content": "hi"}], truncate=False)
    assert prompt.startswith("<|im_start|>user\nhi")


def test_generate_prompt_assembly():
    prompt, _ = generate_prompt(CHATML, "q", system="s", model_system="ignored",
                                model_messages=[{"role": "user", "content": "m1"}, {"role": "assistant", "content": "m2"}])
    assert prompt == ("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nm1<|im_end|>\n"
                      "<|im_start|>assistant\nm2<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
    prompt, _ = generate_prompt(CHATML, "q", model_system="ms")
    assert prompt.startswith("<|im_start|>system\nms<|im_end|>")
    # a deprecated context: its text goes first and the Modelfile messages are skipped
    prompt, _ = generate_prompt(CHATML, "q", context="PREV", model_messages=[{"role": "user", "content": "m1"}])
    assert prompt == "PREV<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    # a template override renders directly; generate sees an empty (not absent) tool list
    prompt, media = generate_prompt(CHATML, "q", template_override="{{ .Prompt }}{{ .Tools }}", images=["AAA"])
    assert prompt == "q<no value>" and media == [Media(0, "AAA")]  # a legacy template: no .Tools
    prompt, _ = generate_prompt("{{ range .Messages }}{{ .Content }}{{ end }}{{ .Tools }}", "q")
    assert prompt == "q[]"
    prompt, media = generate_prompt(CHATML, "see", images=["AAA"])
    assert "[img-0]see" in prompt and media == [Media(0, "AAA")]


def test_default_template_is_prompt():
    prompt, _ = generate_prompt(None, "just this")
    assert prompt == "just this"


def test_filter_think_tags_before_last_user():
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>hmm</think>\n\nA1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>keep</think>A2"},
    ]
    out = filter_think_tags(msgs)
    assert out[1]["content"] == "A1" and out[3]["content"] == "<think>keep</think>A2"
    assert msgs[1]["content"].startswith("<think>")  # inputs untouched
    from pollama.template.prompt import strip_leading_thinking

    assert strip_leading_thinking("  plain") == "  plain"
    assert strip_leading_thinking(" \n ") == ""
    assert strip_leading_thinking("<thi") == ""
    assert strip_leading_thinking("<think>unfinished") == ""
    assert strip_leading_thinking("\n<think>\n a </think> b </think> c") == "b </think> c"


QWEN3_LIKE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ if .Content }}{{ .Content }}{{ else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>{{ end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}{{ end }}
{{- end }}"""


def test_thinking_and_tool_templates_end_to_end():
    tmpl = Template.parse(QWEN3_LIKE)
    assert thinking_tags(tmpl) == ("<think>", "</think>")
    assert tool_call_tag(tmpl) == "<tool_call>"
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "thinking": "plan",
         "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "user", "content": "go"},
    ]
    prompt, _ = chat_prompt(tmpl, msgs, think=False, truncate=False)
    assert prompt == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>plan</think>\n<tool_call>\n"
                      '{"name": "f", "arguments": {"x":1}}\n</tool_call><|im_end|>\n<|im_start|>user\ngo<|im_end|>\n'
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="message 0 must be an object"):
        chat_prompt(CHATML, ["hello"], truncate=False)
    with pytest.raises(ValueError, match="think"):
        think_values(3)


def test_jinja_chat_prompt_matches_transformers_on_qwen_template():
    import transformers
    import tokenizers
    from realmodels import real_model

    from pollama.fs.gguf import GGUFFile
    from pollama.template.prompt import hf_messages, jinja_chat_prompt

    md = GGUFFile(real_model("qwen2.5-coder-0.5b")).metadata
    template = md["tokenizer.chat_template"]
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "21", "tool_name": "get_weather"},
    ]
    ours, _ = jinja_chat_prompt(template, msgs, tools=TOOLS, truncate=False)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = template
    want = tok.apply_chat_template(hf_messages(msgs), tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert ours == want
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in ours


def test_jinja_chat_prompt_strips_bos_and_truncates():
    from pollama.template.prompt import jinja_chat_prompt

    template = "{{ bos_token }}{% for m in messages %}{{ m.content }} {% endfor %}{% if enable_thinking %}T{% endif %}"
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "a b c"}, {"role": "user", "content": "d"}]
    prompt, _ = jinja_chat_prompt(template, msgs, bos_token="<s>", think=True, count_tokens=words, num_ctx=3)
    assert prompt == "sys d T"


def test_tool_function_prints_as_a_go_struct_as_in_ollama():
    # Ollama's templateToolFunction has no String method: %v of the struct, where only the
    # properties map (which has one) prints as JSON.
    tmpl = "{{ range .Messages }}{{ end }}{{ range .Tools }}{{ .Function }}{{ end }}"
    assert execute(tmpl, messages=[], tools=TOOLS) == (
        '{get_weather Get <weather> {object <nil> <nil> [city] {"city":{"type":"string","description":"City name"},'
        '"unit":{"type":["string","null"],"enum":["C","F"]}}}}'
    )


def test_legacy_mode_continues_a_final_assistant_message():
    # The open turn holds the unfinished answer: the prompt ends with it, ready to be continued.
    msgs = [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "One, two,"}]
    for tmpl in ("<u>{{ .Prompt }}</u><a>", "<u>{{ .Prompt }}</u><a>{{ .Response }}</a>"):
        assert execute(tmpl, messages=msgs) == "<u>Count to three</u><a>One, two,"


def test_legacy_mode_renders_finished_turns_whole():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    tmpl = "{{ if .System }}({{ .System }}){{ end }}<u>{{ .Prompt }}</u><a>{{ .Response }}</a>"
    assert execute(tmpl, messages=msgs) == "(S)<u>Q1</u><a>A1</a><u>Q2</u><a>"
    # the implicit {{ .Response }} of a template that has none is rendered between turns too
    assert execute("[{{ .Prompt }}] ", messages=msgs) == "[Q1] A1[Q2] "


def test_jinja_chat_prompt_keeps_bos_text_when_the_tokenizer_does_not_add_it():
    # SmolLM2: BOS is <|im_start|> and add_bos is false, so the template's own <|im_start|>
    # is the only one the prompt gets: it must stay.
    from pollama.template.prompt import jinja_chat_prompt

    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    msgs = [{"role": "user", "content": "hi"}]
    kept, _ = jinja_chat_prompt(template, msgs, bos_token="<|im_start|>", tokenizer_adds_bos=False, truncate=False)
    assert kept == "<|im_start|>user\nhi<|im_end|>\n"
    stripped, _ = jinja_chat_prompt(template, msgs, bos_token="<|im_start|>", tokenizer_adds_bos=True, truncate=False)
    assert stripped == "user\nhi<|im_end|>\n"
