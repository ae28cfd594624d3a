"""gpt-oss's harmony output split into thinking, content and tool calls, streamed at every split.

The outputs are harmony as OpenAI's harmony format guide writes it (and as gpt-oss writes it:
`<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`), the header cases are
Ollama's harmony tests' (harmony/harmonyparser_test.go), and the expected splits are what
the format means: analysis is thinking, a message with a recipient is a tool call, final
is the answer.
"""

from __future__ import annotations

import itertools

import pytest

from pollama.template import ChatOutputParser
from pollama.template.harmony import FunctionNames, HarmonyParser, harmony_tools, is_harmony, parse_header

PROMPT = "<|start|>system<|message|>Reasoning: medium<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def ids():
    n = itertools.count()
    return lambda: f"call_{next(n)}"


def run(pieces, prompt=PROMPT, tools=WEATHER):
    """The whole answer from a streamed output: (thinking, content, [(name, arguments)])."""
    parser = ChatOutputParser(None, tools, True, prompt=prompt, harmony=True, new_id=ids())
    thinking, content, calls = [], [], []
    for delta in [parser.add(p) for p in pieces] + [parser.finish()]:
        thinking.append(delta["thinking"])
        content.append(delta["content"])
        calls += [(c["function"]["name"], c["function"]["arguments"]) for c in delta["tool_calls"]]
    return "".join(thinking), "".join(content), calls


def splits(text, most=2):
    """`text` cut at every position (and every pair of positions when most=2), then one char at a time."""
    n = len(text)
    yield [text]
    for i in range(1, n):
        yield [text[:i], text[i:]]
    if most >= 2:
        for i in range(1, n):
            for j in range(i + 1, n):
                yield [text[:i], text[i:j], text[j:]]
    yield list(text)


CASES = {
    "analysis then final": (
        "<|channel|>analysis<|message|>User says hi. Reply.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?",
        ("User says hi. Reply.", "Hello! How can I help?", [])),
    "final with its <|return|> written out": (
        "<|channel|>final<|message|>Done.<|return|>", ("", "Done.", [])),
    "analysis then a tool call (recipient after the channel, constrain)": (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city":"Paris","days":[1,2]}<|call|>',
        ("Need weather.", "", [("get_weather", {"city": "Paris", "days": [1, 2]})])),
    "a tool call, recipient in the role header, no <|call|> at the end of the stream": (
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}',
        ("", "", [("get_weather", {"city": "Oslo"})])),
    "two calls in one answer": (
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"A"}<|call|>'
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"B"}<|call|>',
        ("", "", [("get_weather", {"city": "A"}), ("get_weather", {"city": "B"})])),
    "plain commentary (a preamble) is content": (
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>It is sunny.",
        ("", "Let me check.It is sunny.", [])),
    "analysis cut off at the end of the stream": (
        "<|channel|>analysis<|message|>Still thinking <|en", ("Still thinking <|en", "", [])),
    "text with near-tags inside a message": (
        "<|channel|>final<|message|>a <|end b <|ca <| c", ("", "a <|end b <|ca <| c", [])),
    "a built-in tool on analysis": (
        '<|channel|>analysis to=browser.search <|constrain|>json<|message|>{"query":"x"}<|call|>',
        ("", "", [("browser.search", {"query": "x"})])),
    "a call cut short (not JSON) comes out as content": (
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Pa',
        ("", '{"city": "Pa', [])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_harmony_output_at_every_split(name):
    text, want = CASES[name]
    most = 2 if len(text) <= 120 else 1  # pairs of cuts for the shorter texts (tens of thousands of runs)
    for pieces in splits(text, most):
        assert run(pieces) == want, pieces


def test_calls_are_numbered_and_have_ids():
    parser = ChatOutputParser(None, WEATHER, True, prompt=PROMPT, harmony=True, new_id=ids())
    delta = parser.add('<|channel|>commentary to=functions.get_weather json<|message|>{}<|call|>'
                       '<|start|>assistant to=functions.get_weather<|channel|>commentary<|message|>{"a":1}<|end|>')
    assert delta["tool_calls"] == [
        {"id": "call_0", "function": {"index": 0, "name": "get_weather", "arguments": {}}},
        {"id": "call_1", "function": {"index": 1, "name": "get_weather", "arguments": {"a": 1}}},
    ]
    assert parser.tool_calls == delta["tool_calls"]


def test_thinking_is_parsed_whatever_think_says():
    # Ollama: gpt-oss cannot stop thinking; its harmony parser returns the analysis as thinking.
    for think in (False, None, "low"):
        parser = ChatOutputParser(None, [], think, prompt=PROMPT, harmony=True)
        delta = parser.add("<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final<|message|>ok")
        assert (delta["thinking"], delta["content"]) == ("hmm", "ok")


def test_prompt_that_opens_a_channel_starts_the_model_inside_it():
    # Ollama prefills a last assistant message's channel; a template may open one itself.
    assert run(["I think."], prompt=PROMPT + "<|channel|>analysis<|message|>") == ("I think.", "", [])
    # A prefilled final text is the prompt's: only what the model writes comes out.
    assert run([" more."], prompt=PROMPT + "<|channel|>final<|message|>Some") == ("", " more.", [])
    call_prompt = PROMPT + "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    assert run(['{"city":"Rome"}'], prompt=call_prompt) == ("", "", [("get_weather", {"city": "Rome"})])
    # A prompt that left no message open: Ollama's implicit "<|start|>assistant".
    assert run(["<|channel|>final<|message|>x"], prompt="<|start|>user<|message|>Hi<|end|>") == ("", "x", [])


def test_structured_output_starts_in_the_final_message():
    assert HarmonyParser(prompt=PROMPT).format_after() == "<|end|><|start|>assistant<|channel|>final<|message|>"
    assert HarmonyParser(prompt=PROMPT + "<|channel|>final<|message|>").format_after() is None


@pytest.mark.parametrize("header,want", [
    ("assistant<|channel|>analysis", ("assistant", "analysis", "")),
    ("assistant<|channel|>analysis to=functions.get_weather", ("assistant", "analysis", "functions.get_weather")),
    ("assistant to=functions.get_weather<|channel|>analysis", ("assistant", "analysis", "functions.get_weather")),
    ("to=functions.get_weather<|channel|>analysis", ("tool", "analysis", "functions.get_weather")),
    ("assistant to=functions.get_weather abc<|channel|>analysis", ("assistant", "analysis", "functions.get_weather")),
    ("assistant<|channel|>commentary to=functions.get_weather <|constrain|>json",
     ("assistant", "commentary", "functions.get_weather")),
    ("assistant to=functions.get_weather<|channel|>commentary <|constrain|>json",
     ("assistant", "commentary", "functions.get_weather")),
    ("assistant<|channel|>commentary to=functions.get_weather<|constrain|>json",
     ("assistant", "commentary", "functions.get_weather")),
    ("assistant to=functions.get_weather<|channel|>commentary<|constrain|>json",
     ("assistant", "commentary", "functions.get_weather")),
])
def test_headers_as_ollama_reads_them(header, want):
    assert parse_header(header) == want


@pytest.mark.parametrize("names,want", [
    (["get weather", "get-weather", "get.weather", "get weather!"], ["get_weather", "get_weather_2", "get_weather_3", "get_weather_4"]),
    (["a🫠bc"], ["abc"]), (["🫠"], ["unnamed"]), (["123"], ["_123"]), (["$"], ["$"]),
    (["𝓸𝓵𝓵𝓪𝓶𝓪"], ["𝓸𝓵𝓵𝓪𝓶𝓪"]), (["ⓞⓛⓛⓐⓜⓐ123"], ["_123"]),
    (["a", "a", "b", "a", "a", "b", "a"], ["a", "a_2", "b", "a_3", "a_4", "b_2", "a_5"]),
    (["browser.open", "python", "not.a.built-in.function", "browser.not_a_real_built_in"],
     ["browser.open", "python", "not_a_built_in_function", "browser_not_a_real_built_in"]),
])
def test_function_names_as_ollama_converts_them(names, want):
    m = FunctionNames()
    assert [m.add(n) for n in names] == want
    assert [m.user_name(w) for w in want] == names


def test_tools_get_names_harmony_can_write():
    tools = [{"type": "function", "function": {"name": "get-weather", "parameters": {}}},
             {"type": "function", "function": {"name": "get weather"}}, {"type": "function", "function": {"name": "python"}}]
    assert [t["function"]["name"] for t in harmony_tools(tools)] == ["get_weather", "get_weather_2", "python"]
    assert tools[0]["function"]["name"] == "get-weather" and harmony_tools(tools)[0]["function"]["parameters"] == {}


def test_a_converted_name_maps_back_to_the_users():
    tools = [{"type": "function", "function": {"name": "get-weather"}}]
    out = run(['<|channel|>commentary to=functions.get_weather<|message|>{"x":1}<|call|>'], tools=tools)
    assert out == ("", "", [("get-weather", {"x": 1})])


def test_which_models_are_harmony():
    go_harmony = "<|start|>user<|message|>{{ .Prompt }}<|end|><|start|>assistant"
    assert is_harmony(family="gptoss", template=go_harmony)
    assert is_harmony(family="gpt-oss", template=go_harmony)
    assert not is_harmony(family="llama", template=go_harmony)  # Ollama: the family must be gpt-oss
    assert not is_harmony(family="gptoss", template="{{ .Prompt }}")
    assert is_harmony(family="llama", template="{{ .Prompt }}", parser="harmony")  # PARSER harmony
    assert not is_harmony(family="gptoss", template=go_harmony, parser="qwen3")
    # Without a Go template the Jinja chat template decides (llama.cpp's test).
    assert is_harmony(chat_template="{{ '<|start|>assistant<|channel|>final<|message|>' }}")
    assert not is_harmony(chat_template="{{ '<|im_start|>assistant' }}")


def test_a_forced_json_call_on_the_final_channel_is_a_call():
    # tool_choice "required": the format holds the final message to one {"name", "arguments"} call.
    parser = ChatOutputParser(None, WEATHER, True, prompt=PROMPT, harmony=True, tool_tag="{", new_id=ids())
    text = ('<|channel|>analysis<|message|>Must call.<|end|><|start|>assistant<|channel|>final<|message|>'
            '{"name": "get_weather", "arguments": {"city": "Rome"}}')
    for pieces in splits(text, most=1):
        parser = ChatOutputParser(None, WEATHER, True, prompt=PROMPT, harmony=True, tool_tag="{", new_id=ids())
        deltas = [parser.add(p) for p in pieces] + [parser.finish()]
        assert "".join(d["thinking"] for d in deltas) == "Must call."
        assert "".join(d["content"] for d in deltas) == ""
        assert [c["function"]["name"] for d in deltas for c in d["tool_calls"]] == ["get_weather"]
        assert parser.tool_calls[0]["function"]["arguments"] == {"city": "Rome"}
