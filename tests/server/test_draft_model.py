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
