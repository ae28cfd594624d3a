"""OpenAI's API through the official `openai` client and raw SSE, against a real server."""

from __future__ import annotations

import json

import ollama
import openai
import pytest

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", timeout=120, max_retries=0)


def test_chat_completions_stream_and_not(oai):
    whole = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=6)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 6 and whole.usage.total_tokens == whole.usage.prompt_tokens + 6
    chunks = list(oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=6,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []


def test_chat_stop_and_system_roles(server, oai):
    messages = [{"role": "developer", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    free = oai.chat.completions.create(model="smollm2", temperature=0, max_tokens=8, messages=messages)
    text = free.choices[0].message.content
    stop = text.strip()[1:3]  # a stop string that occurs early in the greedy answer
    r = oai.chat.completions.create(model="smollm2", temperature=0, max_tokens=8, stop=stop, messages=messages)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == text[: text.index(stop)]
    # "developer" is the system role: the same prompt as a system message.
    with server.http() as http:
        native = http.post("/api/chat", json={"model": "smollm2", "stream": False, "options": {"temperature": 0, "num_predict": 8},
                                              "messages": [{"role": "system", "content": "Answer in one word."},
                                                           {"role": "user", "content": PROMPT}]}).json()
    assert native["message"]["content"] == text


def test_completions(oai):
    r = oai.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason == "length"
    parts = list(oai.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == r.choices[0].text


def test_models_list_and_retrieve(server, oai, smollm2_path):
    client = ollama.Client(host=server.url)
    client.create(model="listed", files={"m.gguf": client.create_blob(smollm2_path)})
    ids = [m.id for m in oai.models.list().data]
    assert "listed:latest" in ids
    m = oai.models.retrieve("listed:latest")
    assert m.id == "listed:latest" and m.owned_by == "library" and m.created > 0
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("missing-model")
    client.delete("listed")


def test_sse_framing_and_done_marker(server):
    body = {"model": "smollm2", "messages": MESSAGES, "stream": True, "max_tokens": 3, "temperature": 0}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_errors_have_openais_shape(server, oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="nope", messages=MESSAGES)
    assert "not found" in e.value.message
    with server.http() as http:
        r = http.post("/v1/chat/completions", content=b"{oops")
        assert r.status_code == 400
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MESSAGES,
                                                    "tools": [{"type": "function", "function": {"name": "f"}}]})
        assert r.status_code == 400 and "tools" in r.json()["error"]["message"]


def test_logprobs_in_openais_shape(oai):
    r = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=3,
                                    logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(c.logprob <= 0 and len(c.top_logprobs) == 2 for c in content)
    assert "".join(c.token for c in content) == r.choices[0].message.content
    legacy = oai.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=3, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3 and all(len(t) <= 2 for t in lp.top_logprobs)


def test_n_above_one_is_ignored_with_one_choice_as_ollama(oai):
    # Ollama's OpenAI layer has no `n`: a request for two choices gets the one answer.
    one = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=4)
    two = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=4, n=2)
    assert len(two.choices) == 1 and two.choices[0].message.content == one.choices[0].message.content
    completed = oai.completions.create(model="smollm2", prompt=PROMPT, temperature=0, max_tokens=4, n=2)
    assert len(completed.choices) == 1 and completed.choices[0].text
