"""A model created with a draft model (Ollama's draft_files in /api/create) decodes greedy
requests speculatively in a real server: the answer is plain decoding's, and the final line
counts the draft tokens evaluated and accepted; `pollama run --verbose` prints the rate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from cliproc import pollama
from tinyllama import tiny_llama

PROMPT = "def f(x):\n    return x * 2\n"


@pytest.fixture(scope="module")
def smollm2_path():
    """Overrides the server fixtures' real model: these tests make tiny models of their own."""
    return None


def upload(http: httpx.Client, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


@pytest.fixture(scope="module")
def served(server_factory, tmp_path_factory):
    """A server whose drafts are verified whatever they cost (the acceptance is what is tested,
    not when drafting pays on this CPU), with model `spec`: a tiny llama and, as its draft, the
    same llama with noise on its weights (it agrees often, not always)."""
    folder = tmp_path_factory.mktemp("models")
    target, noisy = tiny_llama(folder / "target.gguf"), tiny_llama(folder / "noisy.gguf", noise=0.05)
    server = server_factory(POLLAMA_DRAFT_IGNORE_COST="1", OLLAMA_NUM_PARALLEL="1")
    with server.http() as http:
        body = {"model": "spec", "files": {"target.gguf": upload(http, target)},
                "draft_files": {"draft.gguf": upload(http, noisy)}, "stream": False}
        r = http.post("/api/create", json=body)
        assert r.status_code == 200, r.text
        other = tiny_llama(folder / "other.gguf", eos=1)
        r = http.post("/api/create", json={**body, "model": "bad", "draft_files": {"other.gguf": upload(http, other)}})
        assert r.status_code == 400 and "the draft model's tokenizer is not the model's" in r.json()["error"], r.text
        assert [m["name"] for m in http.get("/api/tags").json()["models"]] == ["spec:latest"]
    return server


def test_served_draft_model_gives_plain_decoding_with_accept_counts(served):
    body = {"model": "spec", "prompt": PROMPT, "raw": True, "stream": False, "options": {"temperature": 0, "num_predict": 60}}
    with served.http() as http:
        plain = http.post("/api/generate", json={**body, "options": {**body["options"], "draft_num_predict": 0}}).json()
        drafted = http.post("/api/generate", json=body).json()
        chat = http.post("/api/chat", json={"model": "spec", "stream": False, "options": body["options"],
                                            "messages": [{"role": "user", "content": PROMPT}]}).json()
    assert plain["draft_count"] == plain["draft_accepted_count"] == 0
    assert (drafted["response"], drafted["eval_count"]) == (plain["response"], plain["eval_count"]) and plain["eval_count"] == 60
    assert 0 < drafted["draft_accepted_count"] < drafted["draft_count"]
    assert 0 < chat["draft_accepted_count"] < chat["draft_count"]


def test_run_verbose_prints_the_draft_accept_rate(served):
    result = pollama("run", "spec", PROMPT, "--verbose", "--temperature", "0", "--num-predict", "30",
                     env={"OLLAMA_HOST": served.host})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("draft accept rate:"))
    accepted, drafted = (int(n) for n in line.split("(")[1].split(" draft")[0].split(" of "))
    assert 0 < accepted < drafted and line.startswith(f"draft accept rate:    {accepted / drafted:.2%}")


def test_openai_usage_counts_drafts_as_prediction_tokens(served):
    """OpenAI's own fields for tokens guessed ahead (Predicted Outputs): accepted and rejected
    prediction tokens, read by the official client, streamed or not."""
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": PROMPT}]
    whole = client.chat.completions.create(model="spec", messages=messages, temperature=0, max_tokens=60)
    details = whole.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens > 0
    with served.http() as http:
        native = http.post("/api/chat", json={"model": "spec", "stream": False, "messages": messages,
                                              "options": {"temperature": 0, "num_predict": 60}}).json()
    assert whole.choices[0].message.content == native["message"]["content"]
    assert (details.accepted_prediction_tokens, details.rejected_prediction_tokens) == \
        (native["draft_accepted_count"], native["draft_count"] - native["draft_accepted_count"])
    chunks = list(client.chat.completions.create(model="spec", messages=messages, temperature=0, max_tokens=60,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens_details == details
    completion = client.completions.create(model="spec", prompt=PROMPT, temperature=0, max_tokens=60)
    assert completion.usage.completion_tokens_details.accepted_prediction_tokens > 0
    plain = client.chat.completions.create(model="spec", messages=messages, temperature=0.8, max_tokens=10, seed=1)
    assert plain.usage.completion_tokens_details is None  # sampled: nothing drafted, no details (as Ollama)


def test_create_command_through_the_server_uploads_the_draft(served, tmp_path):
    """`pollama create` as a client: a DRAFT file is uploaded and sent as draft_files; a DRAFT
    that is no file names a model in the server's store (pollama's `draft`)."""
    from pollama.store.store import Store

    target, draft = tiny_llama(tmp_path / "t.gguf"), tiny_llama(tmp_path / "d.gguf", seed=5, n_layers=1)
    env = {"OLLAMA_HOST": served.host}
    (tmp_path / "Modelfile").write_text(f"FROM {target.name}\nDRAFT {draft.name}\n")
    result = pollama("create", "remote-spec", "-f", str(tmp_path / "Modelfile"), env=env)
    assert result.returncode == 0, result.stderr
    (tmp_path / "Modelfile").write_text(f"FROM {target.name}\nDRAFT remote-spec\n")
    result = pollama("create", "by-name", "-f", str(tmp_path / "Modelfile"), env=env)
    assert result.returncode == 0, result.stderr
    store = Store(served.models)
    assert store.resolve("remote-spec").draft_path.read_bytes() == draft.read_bytes()
    assert store.resolve("by-name").draft_path.read_bytes() == target.read_bytes()  # remote-spec's weights
    with served.http() as http:
        r = http.post("/api/create", json={"model": "x", "from": "spec", "draft": "/etc/passwd"})
        assert r.status_code == 400 and "draft must name a model, not a path" in r.json()["error"]
        r = http.post("/api/create", json={"model": "x", "from": "spec", "draft": "ghost", "stream": False})
        assert r.status_code in (400, 404) and "DRAFT ghost" in r.json()["error"], r.text
