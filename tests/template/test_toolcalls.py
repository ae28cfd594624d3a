"""Tool calls parsed from streamed output, and tags inferred from templates (Ollama's tools/)."""

from __future__ import annotations

import json
import re

import pytest

from pollama.template.gotemplate import Template
from pollama.template.toolcalls import (
    ToolCallParser,
    closes_balanced,
    find_arguments,
    find_tag,
    find_tool,
    jinja_tool_call_tag,
    new_tool_call_id,
    tool_call_tag_for,
)

# The templates of Ollama's TestParser, written as Go templates.
QWEN = ('{{if .ToolCalls}}<tool_call>{{range .ToolCalls}}{"name": "{{.Function.Name}}", '
        '"arguments": {{.Function.Arguments}}}{{end}}</tool_call>{{end}}')
DEEPSEEK = ("{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}<|tool▁call▁begin|>function<|tool▁sep|>"
            "get_current_weather\n```json\n{\"location\": \"Tokyo\"}\n```<|tool▁call▁end|>{{end}}"
            "<|tool▁calls▁end|><|end▁of▁sentence|>{{end}}")
JSON = '{{if .ToolCalls}}{{range .ToolCalls}}{"name": "{{.Function.Name}}", "arguments": {{.Function.Arguments}}}{{end}}{{end}}'
MISTRAL = ('{{if .ToolCalls}}[TOOL_CALLS] [{{range .ToolCalls}}{"name": "{{.Function.Name}}", '
           '"arguments": {{.Function.Arguments}}}{{end}}][/TOOL_CALLS]{{end}}')
LIST = '{{if .ToolCalls}}[{{range .ToolCalls}}{"name": "{{.Function.Name}}", "arguments": {{.Function.Arguments}}}{{end}}]{{end}}'
# Llama 3.1's built-in tool form: the model writes <|python_tag|> before its call.
PYTHON_TAG = ('{{- range .Messages }}{{- if .ToolCalls }}<|python_tag|>{{ range .ToolCalls }}{"name": '
              '"{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}<|eom_id|>{{ end }}{{ end }}')

TEMPLATES = {name: Template.parse(text) for name, text in
             [("qwen", QWEN), ("deepseek", DEEPSEEK), ("json", JSON), ("mistral", MISTRAL), ("list", LIST),
              ("python_tag", PYTHON_TAG)]}


def _tool(name: str, *params: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": name.replace("_", " "),
        "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in params}}}}


TOOLS = [
    _tool("get_temperature", "format", "city"),
    _tool("get_conditions", "location"),
    _tool("say_hello"),
    _tool("say_hello_world"),
    _tool("get_address", "location"),
    _tool("add", "a", "b"),
]


def call(index: int, name: str, **arguments) -> tuple:
    return index, name, arguments


# Ollama's TestParser: (name, template, pieces, content, calls as (index, name, arguments)).
STREAMS = [
    ("no tool calls - just text", "qwen", ["Hello, how can I help you today?"], "Hello, how can I help you today?", []),
    ("empty input", "qwen", [""], "", []),
    ("tool call", "qwen",
     ['<tool_call>{"name": "get_conditions", "arguments": {"location": "San Francisco"}}</tool_call>'], "",
     [call(0, "get_conditions", location="San Francisco")]),
    ("empty args", "qwen", ['<tool_call>{"name": "get_conditions", "arguments": {}}</tool_call>'], "",
     [call(0, "get_conditions")]),
    ("text before tool call", "qwen",
     ['Let me check the weather. <tool_call>{"name": "get_temperature", "arguments": {"city": "New York"}}</tool_call>'],
     "Let me check the weather. ", [call(0, "get_temperature", city="New York")]),
    ("qwen no args with text", "qwen", ["Let me say hello to the user. I'll use the say_hello tool. "],
     "Let me say hello to the user. I'll use the say_hello tool. ", []),
    ("two tool calls in a list", "mistral",
     [('[TOOL_CALLS] [{"name": "get_temperature", "arguments": {"city": "London", "format": "fahrenheit"}}, '
      '{"name": "get_conditions", "arguments": {"location": "Tokyo"}}][/TOOL_CALLS]')], "",
     [call(0, "get_temperature", city="London", format="fahrenheit"), call(1, "get_conditions", location="Tokyo")]),
    ("qwen two tool calls", "qwen",
     [("Okay, let's call both tools! <tool_call>{\"name\": \"get_temperature\", \"arguments\": {\"city\": \"London\", "
      "\"format\": \"fahrenheit\"}}</tool_call><tool_call>{\"name\": \"get_conditions\", \"arguments\": "
      "{\"location\": \"Tokyo\"}}</tool_call>")], "Okay, let's call both tools! ",
     [call(0, "get_temperature", city="London", format="fahrenheit"), call(1, "get_conditions", location="Tokyo")]),
    ("empty args followed by args", "qwen",
     [('Let me say hello and check the weather. <tool_call>{"name": "say_hello", "arguments": {}}</tool_call>'
      '<tool_call>{"name": "get_temperature", "arguments": {"city": "London", "format": "fahrenheit"}}</tool_call>')],
     "Let me say hello and check the weather. ",
     [call(0, "say_hello"), call(1, "get_temperature", city="London", format="fahrenheit")]),
    ("qwen empty followed by args", "qwen",
     [('Let me check the weather. <tool_call>{"name": "get_conditions", "arguments": {}}</tool_call>'
      '<tool_call>{"name": "get_conditions", "arguments": {"location": "Tokyo"}}')],
     "Let me check the weather. ", [call(0, "get_conditions"), call(1, "get_conditions", location="Tokyo")]),
    ("deepseek", "deepseek",
     [("<think>Wait, I need to call a tool</think><|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>"
      "get_temperature\n```json\n{\"city\": \"Tokyo\"}\n```<|tool▁call▁end|><|tool▁calls▁end|><|end▁of▁sentence|>")],
     "<think>Wait, I need to call a tool</think>", [call(0, "get_temperature", city="Tokyo")]),
    ("deepseek incremental", "deepseek",
     ["<think>Wait", ", I need", " to call", " a tool</think><|too", "l▁calls▁begin", "|>",
      "<|tool▁call▁begin|>function<|tool▁sep|>get_temperature\n", "```json\n", "{\"city\": \"Tokyo\"}\n", "```",
      "<|tool▁c", "all▁end|>", "<|tool▁calls▁end|>", "<|end▁of▁sentence|>"],
     "<think>Wait, I need to call a tool</think>", [call(0, "get_temperature", city="Tokyo")]),
    ("json", "json", ["{", "\"name\": \"get_temperature\",", "\"arguments\": {", "\"city\": \"Tokyo\"", "}", "}"], "",
     [call(0, "get_temperature", city="Tokyo")]),
    ("json maybe a tool call", "json", ["{", "\"name\": \"get_temperature\",", "\"arguments\": {"], "", []),
    ("json not a tool call", "json",
     ["{", "\"name\": \"search\", ", "\"arguments\": {", "\"query\": \"What is the capital of Canada?\"", "}", "}"],
     '{"name": "search", "arguments": {"query": "What is the capital of Canada?"}}', []),
    ("json object followed by tool call", "json",
     ['{"name": "jeff"}', '{"name": "get_conditions", "arguments": {"location": "San Francisco"}}'],
     '{"name": "jeff"}{"name": "get_conditions", "arguments": {"location": "San Francisco"}}', []),
    ("json object followed by tool call split", "json",
     ['{"name": "jeff"} {', '"name": "get_conditions", "arguments": {"location": "San Francisco"}}'],
     '{"name": "jeff"} {"name": "get_conditions", "arguments": {"location": "San Francisco"}}', []),
    ("json code", "json", ['for { fmt.Println("hello") }'], 'for { fmt.Println("hello") }', []),
    ("list multiple", "list",
     ["[", "{", "\"name\": \"get_temperature\", ", "\"arguments\": {", "\"city\": \"London\"", "}", "},", "{",
      "\"name\": \"get_conditions\", ", "\"arguments\": {", "\"location\": \"Tokyo\"", "}", "}]"], "",
     [call(0, "get_temperature", city="London"), call(1, "get_conditions", location="Tokyo")]),
    ("list partial", "list",
     ["[{", "\"name\": \"get_conditions\", ", "\"arguments\": {", "\"location\": \"Tokyo\"", "}", "}"], "",
     [call(0, "get_conditions", location="Tokyo")]),
    ("list invalid", "list",
     ["[", "{", "\"name\": \"search\", ", "\"arguments\": {", "\"query\": \"What is the capital of Canada?\"", "}", "}"],
     "", []),
    ("list trailing ]", "list",
     ["[", "{", "\"name\": \"get_conditions\", ", "\"arguments\": {", "\"location\": \"Tokyo\"", "}", "}", "]", "]"], "",
     [call(0, "get_conditions", location="Tokyo")]),
    ("list not a tool call", "list", ["[special", " del", "ivery]"], "[special delivery]", []),
    ("tool name with collision", "qwen",
     ["<tool_call>", "{", "\"name\": \"say_hello", "_world\",", "\"arguments\": {}}", "}"], "",
     [call(0, "say_hello_world")]),
    ("tool name with collision multiple", "qwen",
     ["<tool_call>", "{", "\"name\": \"say_hello", "_world\",", "\"arguments\": {}}", "</tool_call>",
      "<tool_call>", "{", "\"name\": \"say_hello", "\",", "\"arguments\": {}}", "</tool_call>"], "",
     [call(0, "say_hello_world"), call(1, "say_hello")]),
    ("tool name with collision non streaming", "qwen", ['<tool_call>{"name": "say_hello'], "", []),
    ("tool name with collision non streaming multiple", "qwen",
     [('<tool_call>{"name": "say_hello", "arguments": {}}</tool_call><tool_call>{"name": "say_hello_world", '
      '"arguments": {}}')], "", [call(0, "say_hello"), call(1, "say_hello_world")]),
    ("tool name with collision non streaming shorter", "qwen",
     ['<tool_call>{"name": "say_hello", "arguments": {}}</tool_call>'], "", [call(0, "say_hello")]),
    ("tool name with collision non streaming longer", "qwen",
     ['<tool_call>{"name": "say_hello_world", "arguments": {}}</tool_call>'], "", [call(0, "say_hello_world")]),
    ("tool name with substring of another (json)", "json",
     ["{", "\"name\": \"get_address\",", "\"arguments\": {", "\"location\": \"London\"", "}", "}"], "",
     [call(0, "get_address", location="London")]),
    ("tool name with substring of another (qwen)", "qwen",
     ['<tool_call>{"name": "get_address", "arguments": {"location": "London"}}</tool_call>'], "",
     [call(0, "get_address", location="London")]),
    ("args before name", "qwen", ['<tool_call>{"arguments": {"a": "5", "b": "10"}, "name": "add"}</tool_call>'], "",
     [call(0, "add", a="5", b="10")]),
    # Beyond Ollama's table: Llama 3.1's <|python_tag|>, with "parameters".
    ("python tag", "python_tag",
     ["I'll look.", "<|python", "_tag|>", '{"name": "get_conditions", ', '"parameters": {"location": "Paris"}}'],
     "I'll look.", [call(0, "get_conditions", location="Paris")]),
]


def run(template: str, pieces: list[str], tools=TOOLS) -> tuple[str, list[dict]]:
    """All add() output of a parser fed `pieces` (Ollama's test loop; no finish())."""
    parser = ToolCallParser(TEMPLATES[template], tools)
    content, calls = "", []
    for piece in pieces:
        c, new = parser.add(piece)
        content += c
        calls += new
    return content, calls


def simple(calls: list[dict]) -> list[tuple]:
    return [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.parametrize(("name", "template", "pieces", "content", "calls"), STREAMS, ids=[s[0] for s in STREAMS])
def test_streamed_tool_calls_as_ollama_parses_them(name, template, pieces, content, calls):
    got_content, got_calls = run(template, pieces)
    assert got_content == content
    assert simple(got_calls) == calls


@pytest.mark.parametrize(("name", "template", "pieces", "content", "calls"), STREAMS, ids=[s[0] for s in STREAMS])
def test_one_character_at_a_time_finds_the_same_calls(name, template, pieces, content, calls):
    # Piece boundaries move nothing but the moment a call is seen.
    text = "".join(pieces)
    got_content, got_calls = run(template, list(text))
    assert simple(got_calls) == calls
    assert got_content == content


def test_calls_have_ids_and_json_shape():
    content, calls = run("qwen", ['<tool_call>{"name": "add", "arguments": {"b": 2, "a": 1.0}}</tool_call>'])
    assert content == ""
    [c] = calls
    assert re.fullmatch(r"call_[a-z0-9]{8}", c["id"])
    assert list(c) == ["id", "function"]
    assert c["function"] == {"index": 0, "name": "add", "arguments": {"b": 2, "a": 1}}
    # the model's argument order, kept
    assert list(c["function"]["arguments"]) == ["b", "a"]
    assert json.dumps(c["function"]["arguments"]) == '{"b": 2, "a": 1}'


def test_ids_are_random_and_injectable():
    ids = {new_tool_call_id() for _ in range(50)}
    assert len(ids) == 50
    parser = ToolCallParser("<tool_call>", TOOLS, new_id=lambda: "call_fixed00")
    _, calls = parser.add('<tool_call>{"name": "say_hello", "arguments": {}}</tool_call>')
    assert calls[0]["id"] == "call_fixed00"


def test_nested_json_with_braces_in_strings_split_everywhere():
    text = ('<tool_call>\n{"name": "get_conditions", "arguments": {"location": "a } { \\" b", '
            '"filter": {"deep": [1, {"x": "]"}], "e": "\\\\"}}}\n</tool_call>')
    _, calls = run("qwen", list(text))
    assert simple(calls) == [call(0, "get_conditions", location='a } { " b', filter={"deep": [1, {"x": "]"}], "e": "\\"})]


def test_stringified_arguments():
    _, calls = run("qwen", ['<tool_call>{"name": "add", "arguments": "{\\"a\\": \\"1\\"}"}</tool_call>'])
    assert simple(calls) == [call(0, "add", a="1")]


# ---------------------------------------------------------------- finish (Ollama's Content())


@pytest.mark.parametrize(("template", "pieces", "content"), [
    ("json", ["{", "\"name\": \"get_temperature\",", "\"arguments\": {"], '{"name": "get_temperature","arguments": {'),
    ("list", ["[{\"name\": \"search\"}"], '[{"name": "search"}'),
    ("qwen", ['<tool_call>{"name": "get_temperature"'], ""),  # a tag's unfinished call is dropped
    ("qwen", ["Hello <tool"], ""),  # held-back partial tag: content at the end
    ("json", ['{"name": "add", "arguments": {}}', " trailing"], ""),
    ("json", ["for { x }"], ""),  # already sent: not again
])
def test_finish_returns_held_content(template, pieces, content):
    parser = ToolCallParser(TEMPLATES[template], TOOLS)
    for piece in pieces:
        parser.add(piece)
    got, calls = parser.finish()
    if template == "qwen" and pieces == ["Hello <tool"]:
        assert got == "<tool"
    else:
        assert got == content
    assert calls == []
    assert parser.finish() == ("", [])


# Ollama's TestContent: (tag, buffer, calls already made, content at the end).
@pytest.mark.parametrize(("tag", "buffer", "n", "want"), [
    ("{", "", 0, ""),
    ("<tool_call>", '<tool_call>{"name": "get_temperature"', 0, ""),
    ("{", '{"name": "get_temperature"}', 0, '{"name": "get_temperature"}'),
    ("{", '{"hello": "world"}', 0, '{"hello": "world"}'),
    ("{", '{"hello": "world"}', 1, ""),
    ("[", '[{"name": "get_temperature"}]', 0, '[{"name": "get_temperature"}]'),
    ("{", '{ fmt.Println("hello")', 0, '{ fmt.Println("hello")'),
])
def test_content_left_at_the_end(tag, buffer, n, want):
    parser = ToolCallParser(tag, TOOLS)
    parser.state = ToolCallParser.TOOL_CALLING
    parser._buffer = buffer
    parser.calls = [{}] * n
    assert parser.finish() == (want, [])


# Ollama's TestDone: (tag, buffer, done).
@pytest.mark.parametrize(("tag", "buffer", "want"), [
    ("{", '{"name": "get_weather"', False),
    ("{", '{"name": "get_weather"}', True),
    ("{", "{}", True),
    ("[", '[{"name": "get_weather"', False),
    ("[", '[{"name": "get_weather"}]', True),
    ("[", "[]", True),
    ("{", '{"note": "a}b"', False),
    ("{", '{"note": "a}b"}', True),
    ("[", '[{"note": "x]y"}', False),
    ("{", "", False),
])
def test_balanced_end_of_a_bare_json_answer(tag, buffer, want):
    assert closes_balanced(buffer, tag, "}" if tag == "{" else "]") is want


def test_other_tags_never_end_by_balance():
    parser = ToolCallParser("<tool_call>", TOOLS)
    assert parser.add("<tool_call>{}") == ("", [])
    assert parser.state == ToolCallParser.TOOL_CALLING


# Ollama's TestFindTag: (buffer, tag, index, found).
@pytest.mark.parametrize(("buffer", "tag", "i", "found"), [
    ("hello world", "<tool_call>", -1, False),
    ("<tool_call>", "<tool_call>", 0, True),
    ("    <tool_call>\n {\"name\": \"bob\"}", "<tool_call>", 4, True),
    ("<tool_call>{\"name\"", "<tool_call>", 0, True),
    ("text <tool_call>", "<tool_call>", 5, True),
    ("<tool_calls><tool_call>", "<tool_calls>", 0, True),
    ("<tool>", "<tool_call>", -1, False),
    ("", "<tool_call>", -1, False),
    ("test<", "<tool_call>", 4, False),
    ("hello <tool_", "<tool_call>", 6, False),
    ("calling tools: [", "[", 15, True),
    ("{\"name\": \"bob\"", "{", 0, True),
    ("\n\n{\n\"name\": \"bob\"", "{", 2, True),
])
def test_find_tag(buffer, tag, i, found):
    assert find_tag(buffer, tag) == (i, found)


# Ollama's TestFindArguments: (buffer, tool name, arguments or None).
FIND_ARGUMENTS = [
    ("", "", None),
    ("   \n\t  ", "", None),
    ('{"format": "fahrenheit", "location": "San Francisco"', "", None),
    ('{"format": "fahrenheit"}}', "", {"format": "fahrenheit"}),
    ('{format: fahrenheit, location: "San Francisco"}', "", None),
    ('{"name": "get_temperature", "arguments": {"format": "fahrenheit", "location": "San Francisco, CA"}}', "",
     {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('[tool]get_temperature[args]{"format": "fahrenheit", "location": "San Francisco, CA"}[end]', "",
     {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('[{"name": "get_temperature", "arguments": {"format": "fahrenheit", "location": "San Francisco, CA"}}', "",
     {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('{"function": {"name": "get_temperature", "arguments": {"format": "fahrenheit", "location": "San Francisco, CA"}}}',
     "", {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('get_temperature({"location": "San Francisco, CA"})', "", {"location": "San Francisco, CA"}),
    (('[{"name": "get_temperature", "arguments": {"location": "San Francisco, CA", "format": "fahrenheit"}}, '
     '{"name": "get_weather", "arguments": {"location": "San Francisco, CA", "format": "fahrenheit"}}]'), "",
     {"location": "San Francisco, CA", "format": "fahrenheit"}),
    (("<|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>get_temperature\n```json\n{\"location\": \"Tokyo\"}\n"
     "```<|tool▁call▁end|><|tool▁calls▁end|><|end▁of▁sentence|>"), "", {"location": "Tokyo"}),
    ('"arguments": {"location": "Tokyo"}}</tool_call>', "", {"location": "Tokyo"}),
    ('{"name": "process_code", "arguments": {"code": "if (x > 0) { return true; }"}}', "",
     {"code": "if (x > 0) { return true; }"}),
    ('{"name": "send_data", "arguments": {"payload": "{\\"nested\\": {\\"key\\": \\"value\\"}}"}}', "",
     {"payload": '{"nested": {"key": "value"}}'}),
    ('{"name": "analyze", "arguments": {"text": "The JSON is: {\\"key\\": \\"val{ue}\\"}"}}', "",
     {"text": 'The JSON is: {"key": "val{ue}"}'}),
    ('{"name": "test", "arguments": {"query": "find } in text"}} {"name": "other"}', "", {"query": "find } in text"}),
    ('{"name": "search", "arguments": {"pattern": "regex: }"}}', "", {"pattern": "regex: }"}),
    (('{"name": "analyze", "arguments": {"data": "{\\"items\\": [{\\"value\\": \\"}\\"}, {\\"code\\": '
     '\\"if (x) { return y; }\\"}]}"}}'), "", {"data": '{"items": [{"value": "}"}, {"code": "if (x) { return y; }"}]}'}),
    ('{"name": "format", "arguments": {"template": "{\\n  \\"key\\": \\"value\\"\\n}"}}', "",
     {"template": '{\n  "key": "value"\n}'}),
    ('{"name": "test", "arguments": {"text": "Unicode: \\u007B and \\u007D"}}', "", {"text": "Unicode: { and }"}),
    ('{"name": "batch", "arguments": ["item1", "item2", "{\\"nested\\": true}"]}', "", None),
    ('{"name": "path", "arguments": {"dir": "C:\\\\Program Files\\\\{App}\\\\"}}', "", {"dir": "C:\\Program Files\\{App}\\"}),
    ('{"name": "query", "arguments": {"sql": "SELECT * FROM users WHERE name = \'{admin}\'"}}', "",
     {"sql": "SELECT * FROM users WHERE name = '{admin}'"}),
    ('{"name": "test", "arguments": {"data": "some {"', "", None),
    ('{"name": "echo", "arguments": {"msg": "He said \\"Hello {World}\\" loudly"}}', "",
     {"msg": 'He said "Hello {World}" loudly'}),
    ('{"name": "code", "arguments": {"snippet": "// This is a comment with { and }"}}', "",
     {"snippet": "// This is a comment with { and }"}),
    ('{"name": "test", "arguments": {"path": "C:\\\\\\\\{folder}\\\\\\\\"}}', "", {"path": "C:\\\\{folder}\\\\"}),
    ('{"name": "test", "arguments": {"a": "", "b": "{value}"}}', "", {"a": "", "b": "{value}"}),
    ('{"name": "test", "arguments": {"key{": "value", "key}": "value2"}}', "", {"key{": "value", "key}": "value2"}),
    ('{"name": "test", "arguments": {"data": "' + "a{b}c" * 100 + '"}}', "", {"data": "a{b}c" * 100}),
    ('{"name": "test", "arguments": {"code": "\\tif (true) {\\n\\t\\treturn;\\n\\t}"}}', "",
     {"code": "\tif (true) {\n\t\treturn;\n\t}"}),
    ('{"name": "test", "arguments": {"data": "before\\u0000{after}"}}', "", {"data": "before\x00{after}"}),
    ('{"name": "test", "arguments": {"data": "text with quote at end\\\\\\""}}', "", {"data": 'text with quote at end\\"'}),
    ('{"name": "test", "arguments": {"items": ["{", "}", {"key": "value"}]}}', "",
     {"items": ["{", "}", {"key": "value"}]}),
    ('{"name": "get_temperature", "arguments": "{\\"format\\": \\"fahrenheit\\", \\"location\\": \\"San Francisco, CA\\"}"}',
     "", {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('{"name": "get_temperature", "parameters": "{\\"format\\": \\"fahrenheit\\", \\"location\\": \\"San Francisco, CA\\"}"}',
     "", {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('{"get_temperature": {"format": "fahrenheit", "location": "San Francisco, CA"}}', "get_temperature",
     {"format": "fahrenheit", "location": "San Francisco, CA"}),
    ('{"get_temperature": "{\\"format\\": \\"fahrenheit\\", \\"location\\": \\"San Francisco, CA\\"}"}', "get_temperature",
     {"format": "fahrenheit", "location": "San Francisco, CA"}),
]


@pytest.mark.parametrize(("buffer", "tool", "want"), FIND_ARGUMENTS)
def test_find_arguments(buffer, tool, want):
    args, _ = find_arguments(tool, buffer)
    assert args == want


def test_find_arguments_json_as_go_decodes_it():
    # NaN/Infinity and out-of-range numbers are not JSON to Go; lone surrogates become U+FFFD.
    assert find_arguments("", '{"a": NaN}') == (None, 0)
    assert find_arguments("", '{"a": 1e999}') == (None, 0)
    assert find_arguments("", '{"a": "\\ud800x"}')[0] == {"a": "\ufffdx"}
    assert find_arguments("", '{"a": 2.0, "b": 2.5, "c": 7}')[0] == {"a": 2, "b": 2.5, "c": 7}
    # a name with "arguments": null inside a string counts as a call without arguments
    assert find_arguments("", '{"name": "x", "arguments": "null", "parameters": {"a": 1}}')[0] is None


def test_find_tool_waits_on_a_possible_longer_name():
    names = ["say_hello", "say_hello_world", "add"]
    assert find_tool(names, '{"name": "say_hello') is None
    assert find_tool(names, '{"name": "say_hello"') == ("say_hello", 19)
    assert find_tool(names, '{"name": "say_hello_world"') == ("say_hello_world", 25)
    assert find_tool(names, "x a") is None  # "a" could become "add"
    assert find_tool(names, "") is None
    assert find_tool([], "anything") is None


# ---------------------------------------------------------------- tags


# Ollama's TestParseTag: (template, tag).
PARSE_TAG = [
    ("", "{"),
    ("{{if .ToolCalls}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),
    ("{{if .ToolCalls}} {{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}\n{{ . }}\n{{end}}{{end}}", "{"),
    ('{{if .ToolCalls}}{{range .ToolCalls}}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{end}}{{end}}',
     "{"),
    ('{{if .ToolCalls}}{{range .ToolCalls}}\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{end}}{{end}}',
     "{"),
    (('{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
     '{{end}}{{end}}'), "{"),
    (('{{if .ToolCalls}}\n{{range .ToolCalls}}\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
     '\r\n{{end}}\r\n{{end}}'), "{"),
    (("{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}<|tool▁call▁begin|>functionget_current_weather\n```json\n"
     "{\"location\": \"Tokyo\"}\n```<|tool▁call▁end|>\n{{end}}<|tool▁calls▁end|>{{end}}"), "<|tool▁calls▁begin|>"),
    (('{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}", "arguments": '
     '{{ .Function.Arguments }}}</tool_call>{{end}}{{end}}'), "<tool_call>"),
    (('{{if .ToolCalls}}\n{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}", "arguments": '
     '{{ .Function.Arguments }}}</tool_call>{{end}}{{end}}'), "<tool_call>"),
    (('{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}", "arguments": '
     '{{ .Function.Arguments }}}<tool_call>{{end}}{{end}}'), "<tool_call>"),
    ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second text{{end}}", "First text"),
    ("{{if .ToolCalls}}Action: ```json{{end}}", "Action: ```json"),
    ("{{if .ToolCalls}}functools[{{end}}", "functools["),
    ("{{if .ToolCalls}}[TOOL_CALL] [{{end}}", "[TOOL_CALL] ["),
    ("{{if .ToolCalls}}[TOOL_CALL][{{end}}", "[TOOL_CALL]["),
]


@pytest.mark.parametrize(("template", "tag"), PARSE_TAG)
def test_tag_inferred_as_ollama_does(template, tag):
    assert tool_call_tag_for(Template.parse(template)) == tag
    assert tool_call_tag_for(template) == tag
    assert ToolCallParser(Template.parse(template), TOOLS).tag == tag


@pytest.mark.parametrize(("name", "tag"), [
    ("qwen", "<tool_call>"), ("deepseek", "<|tool▁calls▁begin|>"), ("json", "{"), ("mistral", "[TOOL_CALLS] ["),
    ("list", "["), ("python_tag", "<|python_tag|>"),
])
def test_test_templates_tags(name, tag):
    assert tool_call_tag_for(TEMPLATES[name]) == tag


def test_no_template_means_bare_json():
    assert tool_call_tag_for(None) == "{"
    assert ToolCallParser(None, TOOLS).tag == "{"
    assert ToolCallParser("", TOOLS).tag == "{"


@pytest.mark.parametrize(("chat_template", "tag"), [
    ("{%- for tool_call in message.tool_calls %}{{- '\\n<tool_call>\\n' }}{{ tool_call | tojson }}</tool_call>", "<tool_call>"),
    ("{{- '[TOOL_CALLS]' + tool_calls | tojson + eos_token }}{{ '[TOOL_RESULTS]' }}", "[TOOL_CALLS]"),
    ("{%- if builtin_tools %}{{- '<|python_tag|>' + tool_call.name }}{%- endif %}", "<|python_tag|>"),
    ("<tool_call> then [TOOL_CALLS]", "<tool_call>"),
    ("[TOOL_CALLS] then <tool_call>", "[TOOL_CALLS]"),
    ("{{ messages[0]['content'] }}", "{"),
    ("", "{"),
    (None, "{"),
])
def test_jinja_tags(chat_template, tag):
    assert jinja_tool_call_tag(chat_template) == tag


def test_jinja_parser_uses_the_jinja_tag():
    parser = ToolCallParser.for_jinja("...<tool_call>...", TOOLS)
    assert parser.tag == "<tool_call>"
    assert simple(parser.add('<tool_call>\n{"name": "add", "arguments": {"a": "1", "b": "2"}}\n</tool_call>')[1]) == [
        call(0, "add", a="1", b="2")]


def test_a_long_bare_json_answer_stays_linear_enough():
    # A JSON answer that is no tool call, streamed in small pieces, is buffered and released at its end.
    body = "{" + ", ".join(f'"k{i}": {{"v": [{i}, "x}}y"]}}' for i in range(1000)) + "}"
    parser = ToolCallParser("{", TOOLS)
    out = []
    for i in range(0, len(body), 3):
        out.append(parser.add(body[i:i + 3])[0])
    assert "".join(out) == body


# ---------------------------------------------------------------- JSON calls at the start (Jinja-only models)


@pytest.mark.parametrize(("text", "content", "names"), [
    ('```json\n{\n    "name": "get_conditions",\n    "arguments": {"location": "Paris"}\n}\n```', "", ["get_conditions"]),
    ('\n```\n{"name": "add", "arguments": {"a": "1", "b": "2"}}\n```', "", ["add"]),
    ('<tool_call>\n{"name": "say_hello", "arguments": {}}\n</tool_call>', "", ["say_hello"]),
    ('  {"name": "say_hello_world", "arguments": {}}', "", ["say_hello_world"]),
    (('```json\n{"name": "get_conditions", "arguments": {"location": "A"}}\n```\n'
     '```json\n{"name": "get_conditions", "arguments": {"location": "B"}}\n```'), "", ["get_conditions", "get_conditions"]),
    # JSON that names no tool is content, released when it closes
    ('```json\n{"name": "Bob", "age": 3}\n```\nThat is Bob.', '```json\n{"name": "Bob", "age": 3}\n```\nThat is Bob.', []),
    ('```python\nprint("{")\n```', '```python\nprint("{")\n```', []),
    ('```json\n[1, 2]\n```', '```json\n[1, 2]\n```', []),
    ('{"answer": 42}', '{"answer": 42}', []),
    ("Sure. ```json\n{\"name\": \"add\"}```", "Sure. ```json\n{\"name\": \"add\"}```", []),
    ("``", "``", []),
    ("", "", []),
    # text first: only the tag counts then
    ('Let me see. <tool_call>{"name": "add", "arguments": {"a": "1"}}</tool_call>', "Let me see. ", ["add"]),
])
@pytest.mark.parametrize("split", ["whole", "chars"])
def test_json_start_reads_calls_as_llama_cpp_does(text, content, names, split):
    parser = ToolCallParser.for_jinja("...<tool_call>...", TOOLS)
    assert parser.tag == "<tool_call>"
    pieces = [text] if split == "whole" else list(text)
    got, calls = "", []
    for piece in pieces:
        c, new = parser.add(piece)
        got += c
        calls += new
    c, new = parser.finish()
    assert got + c == content
    assert [call["function"]["name"] for call in calls + new] == names
    assert [call["function"]["index"] for call in calls] == list(range(len(names)))


def test_json_start_is_off_for_go_templates():
    parser = ToolCallParser(TEMPLATES["qwen"], TOOLS)
    text = '```json\n{"name": "add", "arguments": {"a": "1"}}\n```'
    assert parser.add(text) == (text, [])


def test_two_bare_json_calls_streamed():
    # Ollama's brace balance would send the second call as content; both are calls here.
    text = '{"name": "add", "arguments": {"a": "1"}}\n{"name": "add", "arguments": {"a": "2"}}'
    content, calls = run("json", list(text))
    assert [c["function"]["arguments"] for c in calls] == [{"a": "1"}, {"a": "2"}]
    assert content == ""
