"""Ollama's native API through the official `ollama` client and raw HTTP, against a real server."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import ollama
import pytest

GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 6}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=120)


def test_root_and_version(server):
    with server.http() as http:
        r = http.get("/")
        assert r.status_code == 200 and r.text == "Ollama is running"
        assert http.head("/").status_code == 200
        assert http.get("/api/version").json()["version"]
        assert http.head("/api/version").status_code == 200
        # An unknown route (or method) is gin's plain-text answer, as Ollama's server gives it.
        missing = http.get("/api/nothing")
        assert (missing.status_code, missing.text, missing.headers["content-type"]) == (404, "404 page not found", "text/plain")
        wrong = http.get("/api/chat")
        assert (wrong.status_code, wrong.text, wrong.headers["content-type"]) == (405, "405 method not allowed", "text/plain")
        assert http.get("/api/version").json() == {"version": "0.32.15"}  # the Ollama release whose API this is


def test_generate_streams_ndjson_and_matches_non_streaming(server, client):
    body = {"model": "smollm2", "prompt": PROMPT, "raw": True, "options": GREEDY}
    with server.http() as http, http.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"]
    final = lines[-1]
    assert final["done_reason"] == "length" and final["eval_count"] == 6
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert key in final, key
    assert final["created_at"].endswith("Z")
    streamed = "".join(line["response"] for line in lines)
    assert streamed.startswith(" Paris.")  # llama.cpp's greedy continuation of the raw prompt

    whole = client.generate(model="smollm2", prompt=PROMPT, raw=True, options=GREEDY)
    assert whole.response == streamed and whole.done and whole.done_reason == "length"


def test_speculative_decoding_counts_in_final_responses(server):
    """Greedy requests draft by prompt lookup where it pays (code the answer copies): the
    final line says how many draft tokens were evaluated and accepted; the text is that of
    plain decoding (draft_num_predict 0)."""
    counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
    code = ('def area(width, height):\n    if width < 0 or height < 0:\n        raise ValueError("negative size")\n'
            '    return width * height\n')
    copying = (f"<|im_start|>user\nRepeat this code exactly:\n{code}<|im_end|>\n"
               "<|im_start|>assistant\n```python\n")  # Qwen's template, the answer opened
    body = {"model": "qwen2.5-coder-0.5b", "prompt": copying, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 40}}
    with server.http() as http:
        plain = http.post("/api/generate", json={**body, "options": {**body["options"], "draft_num_predict": 0}}).json()
        drafted = http.post("/api/generate", json={**body, "keep_alive": 0})  # then unloaded: other tests list smollm2 alone
        drafted = drafted.json()
        chat = http.post("/api/chat", json={"model": "smollm2", "stream": False, "options": body["options"],
                                            "messages": [{"role": "user", "content": f"Repeat: {counting}"}]}).json()
    assert plain["draft_count"] == plain["draft_accepted_count"] == 0
    assert drafted["response"] == plain["response"] == f"{code}```" and drafted["eval_count"] == plain["eval_count"]
    assert 0 < drafted["draft_accepted_count"] <= drafted["draft_count"]
    assert chat["draft_count"] >= chat["draft_accepted_count"] >= 0


def test_generate_templated_context_and_raw(client):
    # Without a Modelfile TEMPLATE the GGUF's own chat template applies (as Ollama does now).
    first = client.generate(model="smollm2", prompt=PROMPT, options=GREEDY)
    chat = client.chat(model="smollm2", messages=[{"role": "user", "content": PROMPT}], options=GREEDY)
    assert first.response == chat.message.content
    raw = client.generate(model="smollm2", prompt=PROMPT, raw=True, options=GREEDY)
    assert raw.context is None and raw.response != first.response
    # context = the prompt's and the response's tokens; it goes back in as text before the next prompt.
    assert len(first.context) == first.prompt_eval_count + 6 or len(first.context) > 6
    again = client.generate(model="smollm2", prompt="And Germany?", context=first.context, options={**GREEDY, "num_predict": 2})
    assert again.done and again.eval_count == 2 and again.prompt_eval_count > 0


def test_generate_stop_and_options_from_request(client):
    r = client.generate(model="smollm2", prompt="1, 2, 3, 4,", raw=True, options={"temperature": 0, "num_predict": 24, "stop": [","]})
    assert r.response.strip() == "5" and r.done_reason == "stop"


def test_chat_stream_and_not(client):
    messages = [{"role": "user", "content": PROMPT}]
    whole = client.chat(model="smollm2", messages=messages, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content and whole.done
    parts = list(client.chat(model="smollm2", messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == 6


def test_logprobs(server):
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": PROMPT, "stream": False, "options": GREEDY,
                                             "logprobs": True, "top_logprobs": 3}).json()
    assert len(r["logprobs"]) == 6
    first = r["logprobs"][0]
    assert first["logprob"] <= 0 and len(first["top_logprobs"]) == 3
    assert first["top_logprobs"][0]["token"] == first["token"]  # greedy: the best one was taken


def test_debug_render_only(server):
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": PROMPT, "stream": False,
                                             "_debug_render_only": True}).json()
    # As Ollama: the rendered prompt only (done false, no metrics, image_count left out when 0).
    assert r["done"] is False and "eval_count" not in r and set(r["_debug_info"]) == {"rendered_template"}
    rendered = r["_debug_info"]["rendered_template"]
    assert "<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n" in rendered
    assert rendered.startswith("<|im_start|>system\n")  # the template's default system prompt


def test_empty_prompt_loads_and_keep_alive_zero_unloads(server, client):
    r = client.generate(model="smollm2", prompt="", keep_alive="10m")
    assert r.done and r.done_reason == "load"
    ps = client.ps().models
    assert [m.model for m in ps] == ["smollm2:latest"]
    expires = ps[0].expires_at
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10, seconds=5)
    assert ps[0].context_length > 0 and ps[0].size > 0
    r = client.generate(model="smollm2", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert client.ps().models == []
    # A generation with keep_alive 0 unloads as soon as it ends.
    client.generate(model="smollm2", prompt=PROMPT, options=GREEDY, keep_alive=0)
    assert client.ps().models == []
    chat = client.chat(model="smollm2", messages=[], keep_alive=-1)
    assert chat.done_reason == "load"
    assert client.ps().models[0].expires_at.year > 2200  # forever


def test_tokenize_and_detokenize(server):
    with server.http() as http:
        tokens = http.post("/api/tokenize", json={"model": "smollm2", "content": PROMPT}).json()["tokens"]
        assert tokens == [504, 3575, 282, 4649, 314]
        text = http.post("/api/detokenize", json={"model": "smollm2", "tokens": tokens}).json()["content"]
        assert text == PROMPT
        bad = http.post("/api/detokenize", json={"model": "smollm2", "tokens": [10**9]})
        assert bad.status_code == 400 and "outside the vocabulary" in bad.json()["error"]


def test_create_list_show_copy_delete(server, client, smollm2_path, tmp_path):
    digest = client.create_blob(smollm2_path)
    with server.http() as http:
        assert http.head(f"/api/blobs/{digest}").status_code == 200
        assert http.head("/api/blobs/sha256:" + "0" * 64).status_code == 404
    statuses = [p.status for p in client.create(
        model="smolly", files={"smollm2.gguf": digest}, parameters={"temperature": 0, "num_predict": 4, "stop": ["!"]},
        system="You are terse.", license="MIT", stream=True)]
    assert statuses[0] == "gathering model components" and statuses[-1] == "success"
    names = [m.model for m in client.list().models]
    assert "smolly:latest" in names
    entry = next(m for m in client.list().models if m.model == "smolly:latest")
    assert entry.details.family == "llama" and entry.details.quantization_level == "Q4_1" and entry.size > 90e6

    shown = client.show("smolly")
    assert "completion" in shown.capabilities
    with server.http() as http:
        assert http.post("/api/show", json={"model": "smolly"}).json()["system"] == "You are terse."
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "num_predict" in shown.parameters and '"!"' in shown.parameters
    assert shown.modelfile.startswith("# Modelfile generated by")

    # The model's parameters apply (num_predict 4), the request's override them.
    assert client.generate(model="smolly", prompt=PROMPT).eval_count == 4
    assert client.generate(model="smolly", prompt=PROMPT, options={"num_predict": 2}).eval_count == 2

    client.copy("smolly", "team/smolly:v2")
    assert "team/smolly:v2" in [m.model for m in client.list().models]
    client.delete("smolly")
    client.delete("team/smolly:v2")
    assert "smolly:latest" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("smolly")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.copy("nope", "other")
    assert e.value.status_code == 404


def test_create_from_existing_model_json_form(server, client, smollm2_path):
    digest = client.create_blob(smollm2_path)
    client.create(model="base-a", files={"m.gguf": digest})
    r = client.create(model="derived-a", from_="base-a", parameters={"num_predict": 3}, system="Hi")
    assert r.status == "success"
    with server.http() as http:
        assert http.post("/api/show", json={"model": "derived-a"}).json()["system"] == "Hi"
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="x", from_="no-such-model")
    assert e.value.status_code == 400 and "no-such-model" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="x", from_=str(smollm2_path))  # the server's files are not the client's
    assert e.value.status_code == 400 and "not a path" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="x", files={"../escape.gguf": client.create_blob(smollm2_path)})
    assert e.value.status_code == 400 and "invalid file name" in str(e.value)
    client.delete("derived-a")
    client.delete("base-a")


def test_blob_upload_is_verified(server):
    data = b"hello blob"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.http() as http:
        assert http.post(f"/api/blobs/{good}", content=data).status_code == 201
        assert http.head(f"/api/blobs/{good}").status_code == 200
        wrong = "sha256:" + "1" * 64
        r = http.post(f"/api/blobs/{wrong}", content=data)
        assert r.status_code == 400 and "digest" in r.json()["error"]
        assert http.head(f"/api/blobs/{wrong}").status_code == 404
        for bad in ("sha256:../../etc", "sha256-" + "0" * 64, "md5:abc"):
            r = http.post(f"/api/blobs/{bad}", content=data)
            assert r.status_code in (400, 404), (bad, r.status_code)
        assert not any(p.name.startswith("..") for p in (server.models / "blobs").iterdir())




def test_cors_and_host_check(server):
    with server.http() as http:
        ok = http.options("/api/tags", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
        # An allowed preflight is gin-contrib/cors's bare 204 (as Ollama answers it).
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        foreign = http.options("/api/tags", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers
        # Bound to loopback: a foreign Host (DNS rebinding) is refused, a local one served.
        assert http.get("/api/version", headers={"Host": "evil.example"}).status_code == 403
        assert http.get("/api/version", headers={"Host": "localhost:11434"}).status_code == 200


def test_a_model_file_that_fails_to_load_is_a_clear_400_and_the_server_goes_on(server, client, smollm2_path, tmp_path):
    import numpy as np

    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf

    broken = tmp_path / "broken.gguf"
    with GGUFFile(smollm2_path) as g:
        tensors = [(i.name, np.array(g.tensor_bytes(i.name)), i.type, i.shape) for i in g.tensors.values()
                   if i.name != "blk.0.ffn_up.weight"]
        write_gguf(broken, dict(g.metadata), tensors)
    client.create(model="broken", files={"broken.gguf": client.create_blob(broken)})
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "broken", "prompt": "Hi"})
        assert r.status_code == 400  # the file's fault (Ollama: 500): a retry would not load it either
        assert "error loading model broken:latest" in r.json()["error"] and "blk.0.ffn_up.weight" in r.json()["error"]
        assert "broken:latest" not in [m["name"] for m in http.get("/api/ps").json()["models"]]
        ok = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}})
        assert ok.status_code == 200
    client.delete("broken")


def test_next_chat_turn_counts_the_whole_prompt(server, client):
    def prompt_tokens(messages) -> int:
        with server.http() as http:
            rendered = http.post("/api/chat", json={"model": "smollm2", "messages": messages, "stream": False,
                                                    "_debug_render_only": True}).json()["_debug_info"]["rendered_template"]
            return len(http.post("/api/tokenize", json={"model": "smollm2", "content": rendered}).json()["tokens"])

    messages = [{"role": "user", "content": "Name a color."}]
    first = client.chat(model="smollm2", messages=messages, options=GREEDY)
    before = prompt_tokens(messages)
    messages += [{"role": "assistant", "content": first.message.content}, {"role": "user", "content": "And another?"}]
    second = client.chat(model="smollm2", messages=messages, options=GREEDY)
    # The first turn's prompt is in a slot's cache (tests/runner/test_parallel.py checks that only
    # the new tokens are evaluated), and the count is still the whole prompt's, as current
    # Ollama reports it: a client tracking its context use sees it grow.
    assert first.prompt_eval_count == before
    assert second.prompt_eval_count == prompt_tokens(messages) > before
    again = client.chat(model="smollm2", messages=messages, options=GREEDY)
    assert again.prompt_eval_count == second.prompt_eval_count  # all of it cached but the last token
