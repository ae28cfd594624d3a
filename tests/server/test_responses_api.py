"""OpenAI's Responses API (/v1/responses) through the official `openai` client, against a real
server: the answers are the ones /api/chat gives for the same conversation (one pipeline)."""

from __future__ import annotations

import json
import os
import signal

import httpx
import jsonschema
import ollama
import openai
import pydantic
import pytest
from realmodels import real_model

from server.test_chat_features import QWEN, SCHEMAS, THINK_TEMPLATE

PROMPT = "The capital of France is"
FUNCTION = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                           "required": ["city"]}}
TIME = {"type": "function", "name": "get_time", "description": "Get the current time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
QUESTION = "What is the weather in Paris?"
FOLLOW_UP = "Tell me in one sentence."  # (the 0.5B model calls again unless asked for words)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def qwen(server):
    real_model(QWEN)
    return QWEN


@pytest.fixture(scope="module")
def smol_think(server, smollm2_path):
    client = ollama.Client(host=server.url, timeout=300)
    client.create(model="smol-think", files={"m.gguf": client.create_blob(smollm2_path)}, template=THINK_TEMPLATE)
    return "smol-think"


def native_chat(server, model: str, messages: list, num_predict: int, **body) -> dict:
    """/api/chat's answer for the same conversation, greedy, with the model loaded afresh (so the
    prompt is evaluated whole and prompt_eval_count counts all of it)."""
    with server.http(300) as http:
        http.post("/api/generate", json={"model": model, "keep_alive": 0}).raise_for_status()
        r = http.post("/api/chat", json={"model": model, "messages": messages, "stream": False, **body,
                                         "options": {"temperature": 0, "num_predict": num_predict}})
        r.raise_for_status()
        http.post("/api/generate", json={"model": model, "keep_alive": 0}).raise_for_status()
    return r.json()


def test_string_input_and_message_items_answer_as_api_chat(server, oai):
    native = native_chat(server, "smollm2", [{"role": "system", "content": "Answer in one word."},
                                             {"role": "user", "content": PROMPT}], 6)
    r = oai.responses.create(model="smollm2", instructions="Answer in one word.", input=PROMPT, temperature=0,
                             max_output_tokens=6)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "smollm2"
    assert r.output_text == native["message"]["content"]
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    # Cut by max_output_tokens: OpenAI's "incomplete", with the reason.
    assert native["done_reason"] == "length"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 6 == native["eval_count"]
    assert r.usage.total_tokens == r.usage.input_tokens + 6
    # The same conversation as message items: a developer message, and text parts.
    items = oai.responses.create(model="smollm2", temperature=0, max_output_tokens=6, input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer in one word."}]},
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}])
    assert items.output_text == native["message"]["content"] and items.instructions is None


def test_usage_equals_api_chat_counts(server, oai):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
               {"role": "user", "content": PROMPT}]
    native = native_chat(server, "smollm2", [{"role": "system", "content": "Be brief."}, *history], 7)
    for stream in (False, True):
        kwargs = {"model": "smollm2", "instructions": "Be brief.", "temperature": 0, "max_output_tokens": 7,
                  "input": [{"role": m["role"], "content": m["content"]} for m in history]}
        if stream:
            events = list(oai.responses.create(**kwargs, stream=True))
            r = events[-1].response
        else:
            r = oai.responses.create(**kwargs)
        assert r.output_text == native["message"]["content"]
        assert (r.usage.input_tokens, r.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])
        with server.http() as http:  # unloaded: the next request evaluates its whole prompt again
            http.post("/api/generate", json={"model": "smollm2", "keep_alive": 0}).raise_for_status()


def test_function_tool_round_trip(oai, qwen):
    r = oai.responses.create(model=qwen, input=QUESTION, tools=[FUNCTION], temperature=0, max_output_tokens=40)
    assert r.status == "completed"
    (call,) = r.output  # a call and nothing else: no empty message beside it
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and json.loads(call.arguments) == {"city": "Paris"}
    answer = oai.responses.create(model=qwen, tools=[FUNCTION], temperature=0, max_output_tokens=40, input=[
        {"role": "user", "content": QUESTION}, *r.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"},
        {"role": "user", "content": FOLLOW_UP}])
    assert answer.status == "completed" and [o.type for o in answer.output] == ["message"]
    assert "18 degrees" in answer.output_text


def test_function_call_output_is_rendered_as_a_tool_result(server, oai, qwen):
    # The same conversation on /api/chat (tool message named by the call) gives the same answer
    # from the same number of prompt tokens: the items became the same prompt.
    native = native_chat(server, qwen, [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_call_id": "call_1", "tool_name": "get_weather"},
        {"role": "user", "content": FOLLOW_UP}], 30, tools=[{"type": "function", "function": {
            k: v for k, v in FUNCTION.items() if k != "type"}}])
    r = oai.responses.create(model=qwen, tools=[FUNCTION], temperature=0, max_output_tokens=30, input=[
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"},
        {"role": "user", "content": FOLLOW_UP}])
    assert r.output_text == native["message"]["content"]
    assert (r.usage.input_tokens, r.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])
    with server.http() as http:
        http.post("/api/generate", json={"model": qwen, "keep_alive": 0}).raise_for_status()


def test_tool_choice(oai, qwen):
    free = oai.responses.create(model=qwen, input=QUESTION, tools=[FUNCTION], tool_choice="none", temperature=0,
                                max_output_tokens=8)
    assert [o.type for o in free.output] == ["message"] and free.output_text
    forced = oai.responses.create(model=qwen, input="Say hello.", tools=[FUNCTION], tool_choice="required",
                                  temperature=0, max_output_tokens=40)
    assert [(o.type, o.name) for o in forced.output] == [("function_call", "get_weather")]
    named = oai.responses.create(model=qwen, input=QUESTION, tools=[FUNCTION, TIME], temperature=0,
                                 max_output_tokens=40, tool_choice={"type": "function", "name": "get_time"})
    (call,) = named.output
    assert call.name == "get_time" and json.loads(call.arguments)["city"]
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        oai.responses.create(model=qwen, input=QUESTION, tools=[FUNCTION], tool_choice={"type": "function", "name": "x"})


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    population: int = pydantic.Field(ge=0, le=100_000_000)


def test_json_schema_format_parses(oai):
    parsed = oai.responses.parse(model="smollm2", input="Answer in JSON.", text_format=City, temperature=0.8,
                                 max_output_tokens=120)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, City)
    assert parsed.text.format.type == "json_schema" and parsed.text.format.name == "City"
    r = oai.responses.create(model="smollm2", input="Answer in JSON.", temperature=0.8, max_output_tokens=120,
                             text={"format": {"type": "json_schema", "name": "s", "schema": SCHEMAS[1], "strict": True}})
    jsonschema.validate(json.loads(r.output_text), SCHEMAS[1])
    loose = oai.responses.create(model="smollm2", input="A JSON object please.", temperature=0, max_output_tokens=60,
                                 text={"format": {"type": "json_object"}})
    assert loose.output_text.lstrip().startswith("{")


def test_streaming_event_order_and_deltas(oai):
    whole = oai.responses.create(model="smollm2", input=PROMPT, temperature=0, max_output_tokens=8)
    events = list(oai.responses.create(model="smollm2", input=PROMPT, temperature=0, max_output_tokens=8, stream=True))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    final = events[-1].response
    assert text == whole.output_text == final.output_text == events[-4].text
    item_id = events[2].item.id
    assert all(e.item_id == item_id and e.output_index == 0 for e in deltas)
    assert final.usage.output_tokens == 8 and final.status == "incomplete"
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    # The SDK's own stream helper assembles the same response from the events (of an answer
    # that ends by itself: the helper wants response.completed, as with OpenAI's servers).
    short = {"model": "smollm2", "instructions": "Answer in one word.", "input": PROMPT, "temperature": 0,
             "max_output_tokens": 30}
    whole = oai.responses.create(**short)
    with oai.responses.stream(**short) as stream:
        assembled = stream.get_final_response()
    assert assembled.status == whole.status == "completed" and assembled.output_text == whole.output_text


def test_streaming_function_call(oai, qwen):
    events = list(oai.responses.create(model=qwen, input=QUESTION, tools=[FUNCTION], temperature=0,
                                       max_output_tokens=40, stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added, delta, done, item_done = events[2:6]
    assert added.item.type == "function_call" and added.item.status == "in_progress" and added.item.arguments == ""
    assert json.loads(delta.delta) == {"city": "Paris"} and done.arguments == delta.delta
    assert item_done.item.call_id == added.item.call_id and item_done.item.name == "get_weather"
    assert events[-1].response.output[0].arguments == delta.delta


def test_reasoning_effort_is_think(server, oai, smol_think):
    native = native_chat(server, smol_think, [{"role": "user", "content": QUESTION}], 12, think="low")
    thought = oai.responses.create(model=smol_think, input=QUESTION, temperature=0, max_output_tokens=12,
                                   reasoning={"effort": "low"})
    reasoning = thought.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == native["message"]["thinking"]
    assert thought.reasoning.effort == "low"
    events = list(oai.responses.create(model=smol_think, input=QUESTION, temperature=0, max_output_tokens=12,
                                       reasoning={"effort": "low"}, stream=True))
    assert [e.type for e in events[2:4]] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta") == \
        native["message"]["thinking"]
    plain = oai.responses.create(model=smol_think, input=QUESTION, temperature=0, max_output_tokens=12,
                                 reasoning={"effort": "none"})
    assert [o.type for o in plain.output] == ["message"] and plain.output_text
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        oai.responses.create(model="smollm2", input=QUESTION, reasoning={"effort": "high"})


def test_previous_response_id_is_refused_clearly(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="smollm2", input="Hi", previous_response_id="resp_123")
    assert "previous_response_id is not supported" in e.value.message and "whole conversation" in e.value.message
    with pytest.raises(openai.BadRequestError, match="conversation is not supported"):
        oai.responses.create(model="smollm2", input="Hi", conversation="conv_1")


def test_unknown_model_is_openais_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model="no-such-model", input="Hi")
    assert e.value.body["type"] == "not_found_error" and "not found" in e.value.body["message"]


BAD = [
    (b"{oops", 400, "invalid JSON"),
    (b"[]", 400, "expected a JSON object"),
    ({"input": "Hi"}, 400, "model is required"),
    ({"model": "smollm2"}, 400, "input is required"),
    ({"model": "smollm2", "input": ""}, 400, "input is required"),
    ({"model": "smollm2", "input": 5}, 400, '"input"'),
    ({"model": "smollm2", "input": [5]}, 400, "input[0] must be an object"),
    ({"model": "smollm2", "input": [{"type": "nope"}]}, 400, "unsupported input item type 'nope'"),
    ({"model": "smollm2", "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400,
     "unsupported content part type"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}, 400,
     "text must be a string"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [{"type": "input_image",
                                                                  "image_url": "https://example.com/a.png"}]}]},
     400, "only data: URLs"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, 400,
     "file_id images are not supported"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}]}, 400,
     "file inputs are not supported"),
    ({"model": "smollm2", "input": [{"type": "function_call", "name": "f", "call_id": "c", "arguments": "{oops"}]},
     400, "invalid JSON in input[0].arguments"),
    ({"model": "smollm2", "input": [{"type": "function_call", "name": "f", "call_id": "c", "arguments": "[1]"}]},
     400, "must be a JSON object"),
    ({"model": "smollm2", "input": [{"type": "function_call", "arguments": "{}"}]}, 400, "needs a name and a call_id"),
    ({"model": "smollm2", "input": [{"type": "function_call_output", "output": "x"}]}, 400, "needs the call_id"),
    ({"model": "smollm2", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, 400,
     "output must be a string"),
    ({"model": "smollm2", "input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "item references"),
    ({"model": "smollm2", "input": "Hi", "tools": [{"type": "web_search"}]}, 400, "tool type 'web_search'"),
    ({"model": "smollm2", "input": "Hi", "tools": [{"type": "function"}]}, 400, "needs a function with a name"),
    ({"model": "smollm2", "input": "Hi", "tools": "x"}, 400, '"tools"'),
    ({"model": "smollm2", "input": "Hi", "tool_choice": "sometimes"}, 400, "invalid tool_choice"),
    ({"model": "smollm2", "input": "Hi", "text": {"format": {"type": "yaml"}}}, 400, "text.format"),
    ({"model": "smollm2", "input": "Hi", "text": {"format": {"type": "json_schema", "name": "s"}}}, 400,
     "needs a schema"),
    ({"model": "smollm2", "input": "Hi", "text": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}},
     400, "invalid JSON schema"),
    ({"model": "smollm2", "input": "Hi", "reasoning": {"effort": "lots"}}, 400, "invalid reasoning value"),
    ({"model": "smollm2", "input": "Hi", "max_output_tokens": -1}, 400, "must not be negative"),
    ({"model": "smollm2", "input": "Hi", "max_output_tokens": "many"}, 400, '"max_output_tokens"'),
    ({"model": "smollm2", "input": "Hi", "temperature": "hot"}, 400, '"temperature"'),
    ({"model": "smollm2", "input": "Hi", "stream": "yes"}, 400, '"stream"'),
    ({"model": "smollm2", "input": "Hi", "truncation": "sometimes"}, 400, '"truncation"'),
    ({"model": "smollm2", "input": "Hi", "background": True}, 400, "background responses are not supported"),
    ({"model": "smollm2", "input": "Hi", "prompt": {"id": "p"}}, 400, "prompt (a stored prompt template)"),
    ({"model": "smollm2", "input": "Hi", "tools": [FUNCTION]}, 400, "does not support tools"),
    ({"model": "smollm2", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]}, 400, "does not support vision"),
    ({"model": "nope", "input": "Hi"}, 404, "not found"),
]


def bad_request_answers(server, path: str, body: dict | bytes) -> list[httpx.Response]:
    """The answers to a bad body, asked for streamed and not; the server must answer after them."""
    answers = []
    with server.http() as http:
        for stream in (False, True):
            if isinstance(body, dict):
                answers.append(http.post(path, json={**body, "stream": body.get("stream", stream)}))
            else:
                answers.append(http.post(path, content=body))
        assert http.get("/").status_code == 200
    return answers


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_clear_4xx_in_openais_shape(server, body, status, message):
    for r in bad_request_answers(server, "/v1/responses", body):
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and message in error["message"], error


def last_event_when_the_runner_dies(server, path: str, body: dict, marker: str) -> tuple[str, dict]:
    """(name, data) of the last event of a stream whose runner is killed once `marker` was streamed."""
    with server.http(300) as http, http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while marker not in next(lines):
            pass
        for pid in server.runner_pids():
            os.kill(pid, signal.SIGKILL)
        events = [e for e in "\n".join(lines).split("\n\n") if e.strip()]
    name, data = events[-1].strip().split("\n")
    return name.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def test_a_runner_dying_mid_stream_ends_it_with_response_failed(server, oai):
    name, data = last_event_when_the_runner_dies(server, "/v1/responses", {
        "model": "smollm2", "input": "Count from 1 to 500.", "stream": True, "max_output_tokens": 2000},
        "response.output_text.delta")
    assert name == "response.failed" == data["type"]
    assert data["response"]["status"] == "failed" and data["response"]["error"]["message"]
    assert oai.responses.create(model="smollm2", input="Hi", max_output_tokens=2).output  # a new runner answers
