"""Tools, thinking, structured outputs and _debug_render_only, against a real server.

Qwen2.5-Coder-0.5B (its GGUF chat template offers tools) makes the tool calls; SmolLM2 gets a
Go TEMPLATE of our own that opens a <think> block when asked to think (it cannot think, so
it "thinks" whatever it writes first) and carries the structured-output tests.
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest
from realmodels import real_model

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_OPTIONS = {"temperature": 0, "num_predict": 40}
QWEN = "qwen2.5-coder-0.5b"

# Opens <think> after the assistant header when .Think is on; earlier thinking is shown in
# <think>...</think>, which is also where pollama (as Ollama) reads the tags from.
THINK_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}"""

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                               "minItems": 1, "maxItems": 2}},
     "required": ["color", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": -10, "maximum": 10}, "y": {"type": "number", "minimum": -10, "maximum": 10}},
        "required": ["x", "y"], "additionalProperties": False}, "ok": {"type": "boolean"}},
     "required": ["point", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 16},
                                      "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                                      "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
     "required": ["title", "year"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
    {"type": "object", "properties": {"status": {"enum": ["ok", "error", None]}, "retry": {"type": "boolean"}},
     "required": ["status", "retry"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"kind": {"const": "point"}, "coords": {
        "type": "array", "items": {"type": "integer", "minimum": -100, "maximum": 100}, "minItems": 2, "maxItems": 2}},
     "required": ["kind", "coords"], "additionalProperties": False},
    {"type": "object", "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}},
                                            "required": ["name"], "additionalProperties": False}},
     "properties": {"author": {"$ref": "#/$defs/person"}, "editor": {"$ref": "#/$defs/person"}},
     "required": ["author", "editor"], "additionalProperties": False},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 10},
                                                          {"type": "string", "maxLength": 5}]}},
     "required": ["value"], "additionalProperties": False},
]
SCHEMA_IDS = ["person", "enum-array", "nested-bounds", "optional", "array-of-objects", "enum-null", "top-array",
              "const", "refs", "any-of"]
FORMAT_OPTIONS = {"temperature": 0.8, "num_predict": 120}


@pytest.fixture(scope="module")
def qwen(server):
    real_model(QWEN)  # skips when its packages are not installed
    return QWEN


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=300)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def smol_think(client, smollm2_path):
    client.create(model="smol-think", files={"m.gguf": client.create_blob(smollm2_path)}, template=THINK_TEMPLATE)
    return "smol-think"


def _city(arguments) -> str:
    return (json.loads(arguments) if isinstance(arguments, str) else arguments)["city"]


# -- tools ------------------------------------------------------------------------------------------
def test_native_tool_call_streamed_and_not(client, qwen):
    whole = client.chat(model=qwen, messages=QUESTION, tools=[WEATHER], options=CALL_OPTIONS)
    (call,) = whole.message.tool_calls
    assert call.function.name == "get_weather" and _city(call.function.arguments) == "Paris"
    assert whole.done_reason == "stop" and whole.message.content == ""
    parts = list(client.chat(model=qwen, messages=QUESTION, tools=[WEATHER], options=CALL_OPTIONS, stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, _city(c.function.arguments)) for c in calls] == [("get_weather", "Paris")]
    # As Ollama, no chunk is empty in every field but the last.
    assert all(p.message.content or p.message.tool_calls or p.message.thinking for p in parts[:-1])


def test_openai_tool_call_streamed_and_not(oai, qwen):
    whole = oai.chat.completions.create(model=qwen, messages=QUESTION, tools=[WEATHER], temperature=0, max_tokens=40)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(oai.chat.completions.create(model=qwen, messages=QUESTION, tools=[WEATHER], temperature=0,
                                              max_tokens=40, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
        (0, "get_weather", {"city": "Paris"})]
    assert deltas[0].id.startswith("call_") and deltas[0].type == "function"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_choice_none_required_and_named(oai, qwen):
    # "none": the tools are not offered, so the model answers in words.
    free = oai.chat.completions.create(model=qwen, messages=QUESTION, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=8)
    assert free.choices[0].message.tool_calls is None and free.choices[0].message.content
    assert free.choices[0].finish_reason == "length"
    # "required": constrained to a call, even for a question no tool answers.
    hello = [{"role": "user", "content": "Say hello."}]
    forced = oai.chat.completions.create(model=qwen, messages=hello, tools=[WEATHER], tool_choice="required",
                                         temperature=0, max_tokens=40)
    assert forced.choices[0].finish_reason == "tool_calls"
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    # A named function: only it is offered and it must be called.
    named = oai.chat.completions.create(model=qwen, messages=QUESTION, tools=[WEATHER, TIME], temperature=0,
                                        max_tokens=40, tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["city"]
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        oai.chat.completions.create(model=qwen, messages=QUESTION, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})


def test_tool_results_in_openai_messages_are_rendered(server, qwen):
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    with server.http() as http:
        r = http.post("/v1/chat/completions", json={"model": qwen, "messages": messages, "tools": [WEATHER],
                                                    "_debug_render_only": True})
        assert r.status_code == 200, r.text
        rendered = r.json()["_debug_info"]["rendered_template"]
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered
        assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in rendered
        bad = http.post("/v1/chat/completions", json={"model": qwen, "messages": [
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": "f", "arguments": "{oops"}}]}]})
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "invalid tool call arguments"


def test_models_without_the_capability_get_ollamas_errors(server):
    with server.http() as http:
        r = http.post("/api/chat", json={"model": "smollm2", "messages": QUESTION, "tools": [WEATHER]})
        assert r.status_code == 400 and r.json() == {"error": "registry.ollama.ai/library/smollm2:latest does not support tools"}
        r = http.post("/api/chat", json={"model": "smollm2", "messages": QUESTION, "think": True})
        assert r.status_code == 400 and r.json() == {"error": '"smollm2" does not support thinking'}
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "hi", "think": "high"})
        assert r.status_code == 400 and r.json() == {"error": '"smollm2" does not support thinking'}
        r = http.post("/api/chat", json={"model": "smollm2", "messages": QUESTION, "think": "deep"})
        assert r.status_code == 400 and r.json()["error"] == (
            'invalid think value: "deep" (must be "high", "medium", "low", "max", true, or false)')
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": QUESTION, "tools": [WEATHER]})
        assert r.status_code == 400 and "does not support tools" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": QUESTION, "reasoning_effort": "lots"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith('invalid reasoning value: "lots"')
        # think false (reasoning_effort "none") is always allowed.
        r = http.post("/api/chat", json={"model": "smollm2", "messages": QUESTION, "think": False,
                                         "_debug_render_only": True})
        assert r.status_code == 200


# -- thinking ---------------------------------------------------------------------------------------
def test_thinking_is_split_from_content(client, oai, smol_think):
    assert "thinking" in client.show(smol_think).capabilities
    options = {"temperature": 0, "num_predict": 12}
    thought = client.chat(model=smol_think, messages=QUESTION, options=options)  # a thinking model thinks by default
    assert thought.message.thinking and "<think>" not in thought.message.thinking and thought.message.content == ""
    parts = list(client.chat(model=smol_think, messages=QUESTION, options=options, think="low", stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == thought.message.thinking
    plain = client.chat(model=smol_think, messages=QUESTION, options=options, think=False)
    assert not plain.message.thinking and plain.message.content
    generated = client.generate(model=smol_think, prompt=QUESTION[0]["content"], options=options)
    assert generated.thinking == thought.message.thinking and generated.response == ""
    r = oai.chat.completions.create(model=smol_think, messages=QUESTION, temperature=0, max_tokens=12,
                                    reasoning_effort="low")
    assert r.choices[0].message.reasoning == thought.message.thinking
    chunks = list(oai.chat.completions.create(model=smol_think, messages=QUESTION, temperature=0, max_tokens=12,
                                              reasoning_effort="low", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and all(d.role is None for d in deltas[1:])
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == thought.message.thinking
    none = oai.chat.completions.create(model=smol_think, messages=QUESTION, temperature=0, max_tokens=12,
                                       reasoning_effort="none")
    assert getattr(none.choices[0].message, "reasoning", None) is None and none.choices[0].message.content


# -- structured outputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_format_schema_validates(client, schema):
    for seed in (1, 2, 3):
        r = client.chat(model="smollm2", messages=[{"role": "user", "content": "Answer in JSON."}], format=schema,
                        options={**FORMAT_OPTIONS, "seed": seed})
        assert r.done_reason == "stop"  # the structure completed, not cut by num_predict
        jsonschema.validate(json.loads(r.message.content), schema)


@pytest.mark.parametrize("schema", SCHEMAS[:3], ids=SCHEMA_IDS[:3])
def test_response_format_schema_validates(oai, schema):
    r = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Answer in JSON."}],
                                    temperature=0.8, seed=3, max_tokens=120,
                                    response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_format_after_thinking_validates(client, smol_think, schema):
    r = client.chat(model=smol_think, messages=[{"role": "user", "content": "Answer in JSON."}], format=schema,
                    options={**FORMAT_OPTIONS, "seed": 4})
    assert r.message.thinking  # the block the template opened, closed before the JSON
    jsonschema.validate(json.loads(r.message.content), schema)


def test_format_after_thinking_streamed(client, smol_think):
    parts = list(client.chat(model=smol_think, messages=[{"role": "user", "content": "Answer in JSON."}],
                             format=SCHEMAS[0], options={**FORMAT_OPTIONS, "seed": 5}, stream=True))
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content for p in parts)
    assert thinking and "</think>" not in thinking + content
    jsonschema.validate(json.loads(content), SCHEMAS[0])


def test_json_object_format(server, oai):
    r = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "A JSON object please."}],
                                    temperature=0, max_tokens=60, response_format={"type": "json_object"})
    content = r.choices[0].message.content
    # Any object is allowed, so a long one may be cut by max_tokens; a finished one parses.
    assert content.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_invalid_format_is_a_400_with_ollamas_message(server):
    with server.http() as http:
        r = http.post("/api/chat", json={"model": "smollm2", "messages": QUESTION, "format": "yaml"})
        assert r.status_code == 400
        assert r.json() == {"error": 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'}
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "format": {"type": "nonsense"},
                                             "stream": True})
        assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON schema in format: ")


# -- _debug_render_only -----------------------------------------------------------------------------
def test_debug_render_only_shows_the_prompt_with_tools_and_thinking(server, qwen, smol_think):
    with server.http() as http:
        r = http.post("/api/chat", json={"model": qwen, "messages": QUESTION, "tools": [WEATHER],
                                         "_debug_render_only": True, "stream": False})
        body = r.json()
        assert r.status_code == 200 and body["done"] is False and set(body["_debug_info"]) == {"rendered_template"}
        rendered = body["_debug_info"]["rendered_template"]
        assert "<tools>\n" + json.dumps(WEATHER) in rendered
        assert rendered.endswith("What is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
        r = http.post("/api/generate", json={"model": smol_think, "prompt": "Hi", "_debug_render_only": True})
        assert r.json()["_debug_info"]["rendered_template"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
        r = http.post("/api/generate", json={"model": smol_think, "prompt": "Hi", "think": False, "_debug_render_only": True,
                                             "stream": False})
        assert r.json()["_debug_info"]["rendered_template"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        # SmolLM2's BOS text is <|im_start|> and its tokenizer adds no BOS: the template's stays.
        r = http.post("/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                                         "_debug_render_only": True})
        assert r.json()["_debug_info"]["rendered_template"].startswith("<|im_start|>system\n")
