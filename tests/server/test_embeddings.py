"""Embeddings from all-MiniLM-L6-v2, created through /api/create from uploaded safetensors files."""

from __future__ import annotations

import base64

import numpy as np
import ollama
import openai
import pytest

TEXTS = ["The cat sat on the mat.", "A dog played in the park."]


@pytest.fixture(scope="module")
def minilm(server, minilm_folder):
    """all-MiniLM created on the server from its Hugging Face files, uploaded as blobs."""
    folder = minilm_folder
    client = ollama.Client(host=server.url, timeout=300)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".txt"):
            files[str(path.relative_to(folder))] = client.create_blob(path)
    statuses = [p.status for p in client.create(model="minilm", files=files, stream=True)]
    assert statuses[-1] == "success" and "converting model" in statuses
    return "minilm"


def reference_vectors(server, texts):
    from pollama.runner.embed import Embedder
    from pollama.store.store import Store

    path = Store(server.models, hash_cache=None).resolve("minilm").model_path
    with Embedder(path) as embedder:
        return embedder.embed(texts)


def test_api_embed_is_normalized_and_matches_the_engine(server, minilm):
    client = ollama.Client(host=server.url, timeout=120)
    r = client.embed(model=minilm, input=TEXTS)
    vectors = np.array(r.embeddings)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors, reference_vectors(server, TEXTS), atol=1e-5)
    assert r.prompt_eval_count > 10 and r.total_duration > 0
    one = client.embed(model=minilm, input=TEXTS[0])
    assert np.allclose(one.embeddings[0], vectors[0], atol=5e-4)
    short = client.embed(model=minilm, input=TEXTS[0], dimensions=64)
    assert len(short.embeddings[0]) == 64 and abs(np.linalg.norm(short.embeddings[0]) - 1) < 1e-5


def test_legacy_embeddings_and_openai(server, minilm):
    client = ollama.Client(host=server.url, timeout=120)
    legacy = client.embeddings(model=minilm, prompt=TEXTS[0]).embedding
    expected = client.embed(model=minilm, input=TEXTS[0]).embeddings[0]
    # MiniLM's GGUF says normalize_embeddings, so its raw vector is already unit length.
    assert np.allclose(legacy, expected, atol=1e-5)
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    r = oai.embeddings.create(model=minilm, input=TEXTS)
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens > 10
    # Batched with another text, float sums run in another order: equal to ~1e-4.
    assert np.allclose(r.data[1].embedding, client.embed(model=minilm, input=TEXTS[1]).embeddings[0], atol=5e-4)
    b64 = oai.embeddings.create(model=minilm, input=TEXTS[0], encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")  # asked for, so left encoded
    assert np.allclose(decoded, expected, atol=1e-5)


def test_embedding_model_refuses_generate_and_chat_models_refuse_embed(server, minilm):
    with server.http() as http:
        r = http.post("/api/generate", json={"model": minilm, "prompt": "hi"})
        assert r.status_code == 400 and "does not support generate" in r.json()["error"]
        r = http.post("/api/embed", json={"model": "smollm2", "input": "hi"})
        assert r.status_code == 400 and "does not support embeddings" in r.json()["error"]
        r = http.post("/api/embed", json={"model": minilm, "input": "word " * 600, "truncate": False})
        assert r.status_code == 400 and "context length" in r.json()["error"]
        r = http.post("/api/embed", json={"model": minilm, "input": "word " * 600})
        assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
