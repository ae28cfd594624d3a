"""Anthropic's Messages API (/v1/messages) through the official `anthropic` client (2.x),
against a real server: the answers are the ones /api/chat gives for the same conversation."""

from __future__ import annotations

import json

import anthropic
import pytest

from server.test_responses_api import (  # noqa: F401 - qwen and smol_think are fixtures
    FOLLOW_UP,
    PROMPT,
    QUESTION,
    bad_request_answers,
    last_event_when_the_runner_dies,
    native_chat,
    qwen,
    smol_think,
)

# Anthropic's SDK 2.x has no sampling parameters any more; the API field is still honoured.
GREEDY = {"extra_body": {"temperature": 0}}
TOOL = {"name": "get_weather", "description": "Get the current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                         "required": ["city"]}}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="ollama", timeout=300, max_retries=0)


def unload(server, model: str) -> None:
    with server.http() as http:
        http.post("/api/generate", json={"model": model, "keep_alive": 0}).raise_for_status()


def test_plain_message_answers_as_api_chat(server, claude):
    native = native_chat(server, "smollm2", [{"role": "user", "content": PROMPT}], 6)
    m = claude.messages.create(model="smollm2", max_tokens=6, **GREEDY, messages=[{"role": "user", "content": PROMPT}])
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "smollm2"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == native["message"]["content"]
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 6
    # Content as blocks is the same message.
    blocks = claude.messages.create(model="smollm2", max_tokens=6, **GREEDY, messages=[
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]}])
    assert blocks.content[0].text == m.content[0].text


def test_system_as_a_string_or_blocks(server, claude):
    native = native_chat(server, "smollm2", [{"role": "system", "content": "Answer in one word."},
                                             {"role": "user", "content": PROMPT}], 8)
    for system in ("Answer in one word.", [{"type": "text", "text": "Answer in one word.",
                                            "cache_control": {"type": "ephemeral"}}]):
        m = claude.messages.create(model="smollm2", max_tokens=8, **GREEDY, system=system,
                                   messages=[{"role": "user", "content": PROMPT}])
        assert m.content[0].text == native["message"]["content"]


def test_stop_sequences_cut_the_answer(claude):
    messages = [{"role": "user", "content": PROMPT}]
    free = claude.messages.create(model="smollm2", max_tokens=12, **GREEDY, messages=messages).content[0].text
    stop = free.strip()[2:4]
    cut = claude.messages.create(model="smollm2", max_tokens=12, **GREEDY, messages=messages, stop_sequences=[stop])
    assert cut.content[0].text == free[: free.index(stop)]
    assert cut.stop_reason == "end_turn"  # as Ollama: its done_reason does not tell a stop sequence from the end


def test_usage_equals_api_chat_counts(server, claude):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
               {"role": "user", "content": PROMPT}]
    native = native_chat(server, "smollm2", [{"role": "system", "content": "Be brief."}, *history], 7)
    m = claude.messages.create(model="smollm2", system="Be brief.", max_tokens=7, **GREEDY, messages=history)
    assert m.content[0].text == native["message"]["content"]
    assert (m.usage.input_tokens, m.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])
    unload(server, "smollm2")
    with claude.messages.stream(model="smollm2", system="Be brief.", max_tokens=7, **GREEDY,
                                messages=history) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])
    unload(server, "smollm2")


def test_stream_text_joins_to_the_final_message(claude):
    whole = claude.messages.create(model="smollm2", max_tokens=10, **GREEDY, messages=[{"role": "user", "content": PROMPT}])
    with claude.messages.stream(model="smollm2", max_tokens=10, **GREEDY,
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10 and final.usage.input_tokens > 0


def test_stream_event_order(server):
    body = {"model": "smollm2", "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": PROMPT}]}
    with server.http() as http, http.stream("POST", "/v1/messages", json=body,
                                            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = []
    for frame in filter(None, raw.split("\n\n")):
        name, data = frame.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("content_block_delta")
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * deltas, "content_block_stop",
                     "message_delta", "message_stop"] and deltas >= 1
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] == 4


def test_tool_use_and_tool_result_round_trip(claude, qwen):
    question = [{"role": "user", "content": QUESTION}]
    m = claude.messages.create(model=qwen, max_tokens=40, **GREEDY, tools=[TOOL], messages=question)
    assert m.stop_reason == "tool_use"
    (use,) = m.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    answer = claude.messages.create(model=qwen, max_tokens=40, **GREEDY, tools=[TOOL], messages=[
        *question, {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees and sunny"},
                                     {"type": "text", "text": FOLLOW_UP}]}])
    assert answer.stop_reason == "end_turn" and [b.type for b in answer.content] == ["text"]
    assert "18 degrees" in answer.content[0].text
    # Streamed, the input arrives as input_json_delta and the SDK assembles it.
    with claude.messages.stream(model=qwen, max_tokens=40, **GREEDY, tools=[TOOL], messages=question) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}


def test_tool_result_is_rendered_as_api_chat_renders_it(server, claude, qwen):
    native = native_chat(server, qwen, [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_call_id": "toolu_1", "tool_name": "get_weather"},
        {"role": "user", "content": FOLLOW_UP}], 30, tools=[{"type": "function", "function": {
            "name": TOOL["name"], "description": TOOL["description"], "parameters": TOOL["input_schema"]}}])
    m = claude.messages.create(model=qwen, max_tokens=30, **GREEDY, tools=[TOOL], messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "18 degrees and sunny"}]},
                                     {"type": "text", "text": FOLLOW_UP}]}])
    assert m.content[0].text == native["message"]["content"]
    assert (m.usage.input_tokens, m.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])
    unload(server, qwen)


def test_tool_choice(claude, qwen):
    hello = [{"role": "user", "content": "Say hello."}]
    forced = claude.messages.create(model=qwen, max_tokens=40, **GREEDY, tools=[TOOL], messages=hello,
                                    tool_choice={"type": "any"})
    assert forced.stop_reason == "tool_use" and forced.content[0].name == "get_weather"
    free = claude.messages.create(model=qwen, max_tokens=8, **GREEDY, tools=[TOOL], tool_choice={"type": "none"},
                                  messages=[{"role": "user", "content": QUESTION}])
    assert [b.type for b in free.content] == ["text"]


def test_thinking_on_a_thinking_template(server, claude, smol_think):
    native = native_chat(server, smol_think, [{"role": "user", "content": QUESTION}], 12, think=True)
    m = claude.messages.create(model=smol_think, max_tokens=12, **GREEDY, messages=[{"role": "user", "content": QUESTION}],
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert m.content[0].type == "thinking" and m.content[0].thinking == native["message"]["thinking"]
    with claude.messages.stream(model=smol_think, max_tokens=12, **GREEDY, messages=[{"role": "user", "content": QUESTION}],
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        thinking = "".join(e.delta.thinking for e in stream if e.type == "content_block_delta"
                           and e.delta.type == "thinking_delta")
        final = stream.get_final_message()
    assert thinking == native["message"]["thinking"] == final.content[0].thinking
    off = claude.messages.create(model=smol_think, max_tokens=12, **GREEDY, thinking={"type": "disabled"},
                                 messages=[{"role": "user", "content": QUESTION}])
    assert [b.type for b in off.content] == ["text"]
    # A model without thinking is not refused (Claude Code asks every model to think): it answers.
    plain = claude.messages.create(model="smollm2", max_tokens=4, messages=[{"role": "user", "content": QUESTION}],
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in plain.content] == ["text"]
    # Earlier thinking sent back is the assistant's thinking in the prompt again.
    with server.http() as http:
        back = http.post("/v1/messages", json={"model": smol_think, "max_tokens": 1, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "greet back", "signature": ""},
                                              {"type": "text", "text": "Hello"}]},
            {"role": "user", "content": QUESTION}]})
        assert back.status_code == 200, back.text


def test_unknown_model_is_an_error_in_anthropics_shape(claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    body = e.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "not found" in body["error"]["message"] and body["request_id"].startswith("req_")
    with pytest.raises(anthropic.NotFoundError, match="count_tokens is not supported"):
        claude.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "Hi"}])


def test_keys_are_taken_from_x_api_key(server_factory):
    keyed = server_factory(POLLAMA_API_KEYS="secret")
    ok = anthropic.Anthropic(base_url=keyed.url, api_key="secret", timeout=300, max_retries=0)
    assert ok.messages.create(model="smollm2", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]).content
    bad = anthropic.Anthropic(base_url=keyed.url, api_key="wrong", timeout=300, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="smollm2", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
USER = {"role": "user", "content": "Hi"}
BAD = [
    (b"{oops", 400, "invalid JSON"),
    ({"max_tokens": 4, "messages": [USER]}, 400, "model is required"),
    ({"model": "smollm2", "messages": [USER]}, 400, "max_tokens is required"),
    ({"model": "smollm2", "max_tokens": 0, "messages": [USER]}, 400, "max_tokens is required and must be positive"),
    ({"model": "smollm2", "max_tokens": "4", "messages": [USER]}, 400, '"max_tokens"'),
    ({"model": "smollm2", "max_tokens": 4}, 400, "messages is required"),
    ({"model": "smollm2", "max_tokens": 4, "messages": []}, 400, "messages is required"),
    ({"model": "smollm2", "max_tokens": 4, "messages": "Hi"}, 400, '"messages"'),
    ({"model": "smollm2", "max_tokens": 4, "messages": [5]}, 400, 'messages[0]: a message needs role'),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, 400, "needs role"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": 5}]}, 400, "content must be"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
     "unsupported content block type 'audio'"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, 400,
     "text must be a string"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a",
                                                                                       "name": "f", "input": {}}]}]},
     400, "unsupported content block type 'tool_use' in a user message"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "a", "name": "f", "input": [1]}]}]}, 400, "input must be an object"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "input": {}}]}]}, 400, "needs an id and a name"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}]}, 400, "tool_use_id is required"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "a", "content": 3}]}]}, 400, "content must be a string or an array"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}, 400,
     "only base64 image sources"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": PNG}}]}]}, 400,
     "media_type must be one of"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]}, 400,
     "data must be base64"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}, 400,
     "does not support vision"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "system": 5}, 400, '"system"'),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "system": [{"type": "image"}]}, 400,
     "system[0] must be a text block"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "tools": [{"type": "bash_20250124", "name": "bash"}]},
     400, "tool type 'bash_20250124' is not supported"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "tools": [{"input_schema": {}}]}, 400,
     "needs a function with a name"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "tools": [TOOL]}, 400, "does not support tools"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "tool_choice": {"type": "sometimes"}}, 400,
     "invalid tool_choice"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "tool_choice": {"type": "any"}}, 400,
     'tool_choice "required" needs tools'),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "thinking": {"type": "maybe"}}, 400, "invalid thinking"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "thinking": {"type": "enabled", "budget_tokens": -5}},
     400, "budget_tokens"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "output_config": {"effort": "huge"}}, 400,
     "invalid output_config.effort"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "stop_sequences": [""]}, 400, "stop_sequences"),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "temperature": "warm"}, 400, '"temperature"'),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "top_k": "many"}, 400, "\"top_k\""),
    ({"model": "smollm2", "max_tokens": 4, "messages": [USER], "stream": "yes"}, 400, '"stream"'),
    ({"model": "nope", "max_tokens": 4, "messages": [USER]}, 404, "not found"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_clear_4xx_in_anthropics_shape(server, body, status, message):
    for r in bad_request_answers(server, "/v1/messages", body):
        assert r.status_code == status, r.text
        error = r.json()
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error
        assert error["error"]["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]
        assert message in error["error"]["message"], error


def test_a_runner_dying_mid_stream_ends_it_with_an_error_event(server, claude):
    name, data = last_event_when_the_runner_dies(server, "/v1/messages", {
        "model": "smollm2", "max_tokens": 2000, "stream": True,
        "messages": [{"role": "user", "content": "Count from 1 to 500."}]}, "content_block_delta")
    assert name == "error" == data["type"] and data["error"]["type"] == "api_error" and data["error"]["message"]
    assert claude.messages.create(model="smollm2", max_tokens=2, messages=[USER]).content  # a new runner answers


def test_a_plain_anthropic_sdk_tool_loop(claude, qwen):
    """The loop an Anthropic-SDK agent runs: call the tools the model asks for, send the
    results back, until the model answers in words."""
    called = []

    def get_weather(city: str) -> str:
        called.append(city)
        return f"18 degrees and sunny in {city}"

    messages = [{"role": "user", "content": QUESTION}]
    for _ in range(3):
        reply = claude.messages.create(model=qwen, max_tokens=60, **GREEDY, tools=[TOOL], messages=messages)
        if reply.stop_reason != "tool_use":
            break
        messages.append({"role": "assistant", "content": reply.content})
        results = [{"type": "tool_result", "tool_use_id": b.id, "content": get_weather(**b.input)}
                   for b in reply.content if b.type == "tool_use"]
        messages.append({"role": "user", "content": [*results, {"type": "text", "text": FOLLOW_UP}]})
    assert called == ["Paris"]
    assert reply.stop_reason == "end_turn" and "18 degrees" in reply.content[0].text
