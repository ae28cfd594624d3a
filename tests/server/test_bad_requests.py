"""Bad requests get a 4xx JSON error naming the problem, and the server keeps serving."""

from __future__ import annotations

import pytest

SMALL = {"temperature": 0, "num_predict": 2}


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/api/create", "/api/copy",
                                  "/api/tokenize"])
def test_malformed_json(server, path):
    with server.http() as http:
        r = http.post(path, content=b'{"model": "smollm2", ')
        assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
        r = http.post(path, content=b"")
        assert r.status_code == 400 and r.json()["error"] == "missing request body"
        r = http.post(path, content=b"[1, 2]")
        assert r.status_code == 400 and "JSON object" in r.json()["error"]


@pytest.mark.parametrize("body, needle", [
    ({"model": "smollm2", "prompt": 5}, '"prompt"'),
    ({"model": "smollm2", "prompt": "x", "stream": "yes"}, '"stream"'),
    ({"model": "smollm2", "prompt": "x", "options": {"temperature": "hot"}}, '"temperature"'),
    ({"model": "smollm2", "prompt": "x", "options": {"num_predict": 1.5}}, '"num_predict"'),
    ({"model": "smollm2", "prompt": "x", "options": {"stop": 3}}, '"stop"'),
    ({"model": "smollm2", "prompt": "x", "options": {"num_predict": -7, "num_ctx": 64}}, "num_predict"),
    ({"model": "smollm2", "prompt": "x", "options": {"num_ctx": -1}}, "num_ctx"),
    ({"model": "smollm2", "prompt": "x", "options": {"num_ctx": 10**9}}, "num_ctx"),
    ({"model": "smollm2", "prompt": "x", "keep_alive": "soon"}, "duration"),
    ({"model": "smollm2", "prompt": "x", "options": "fast"}, "options"),
    ({"model": "smollm2", "prompt": "x", "top_logprobs": 50}, "top_logprobs"),
    ({"model": "smollm2", "prompt": "x", "raw": True, "system": "s"}, "raw mode"),
    ({"model": "smollm2", "prompt": "x", "format": 5}, "invalid format"),
    ({"model": "smollm2", "prompt": "x", "format": "yaml"}, "invalid format"),
    ({"model": "smollm2", "prompt": "x", "think": True}, "think"),
    ({"prompt": "x"}, "model is required"),
    ({"model": "bad name!!", "prompt": "x"}, "invalid model name"),
])
def test_bad_generate_fields(server, body, needle):
    with server.http() as http:
        r = http.post("/api/generate", json=body)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert needle in r.json()["error"], r.json()


def test_bad_chat_fields(server):
    with server.http() as http:
        for body, needle in (
            ({"model": "smollm2", "messages": "hi"}, '"messages"'),
            ({"model": "smollm2", "messages": [{"content": "x"}]}, "role"),
            ({"model": "smollm2", "messages": [{"role": "user", "content": 3}]}, "content"),
            ({"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
              "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ):
            r = http.post("/api/chat", json=body)
            assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)


def test_unknown_model_is_404_with_ollamas_message(server):
    with server.http() as http:
        for path, body in (("/api/generate", {"model": "nope", "prompt": "x"}),
                           ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                           ("/api/embed", {"model": "nope", "input": "x"})):
            r = http.post(path, json=body)
            assert r.status_code == 404, path
            assert r.json() == {"error": 'model "nope" not found, try pulling it first'}
        # show and delete word it as Ollama's handlers do.
        assert http.post("/api/show", json={"model": "nope"}).json() == {"error": "model 'nope' not found"}
        r = http.request("DELETE", "/api/delete", json={"model": "nope"})
        assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}


def test_oversized_body_is_refused(server):
    with server.http() as http:
        r = http.post("/api/generate", content=b'{"model": "smollm2", "prompt": "' + b"a" * (65 << 20) + b'"}')
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_unknown_options_are_ignored_and_server_still_serves(server):
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                             "options": {**SMALL, "no_such_option": 1, "mirostat": 2}})
        assert r.status_code == 200 and r.json()["eval_count"] == 2


PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_images_for_a_text_model_are_refused_with_ollamas_message(server):
    with server.http() as http:
        for path, body in (
            ("/api/generate", {"model": "smollm2", "prompt": "what is this?", "images": [PNG_1PX]}),
            ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "what?", "images": [PNG_1PX]}]}),
            ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}]}]}),
        ):
            r = http.post(path, json=body)
            assert r.status_code == 400, (path, r.text)
            error = r.json()["error"]
            message = error["message"] if isinstance(error, dict) else error
            assert message == '"smollm2" does not support vision', (path, message)


@pytest.mark.parametrize("url, needle", [
    ("https://example.com/cat.png", "only data: URLs"),
    ("file:///etc/passwd", "only data: URLs"),
    ("data:text/plain;base64,aGk=", "data:image/"),
    ("data:image/png,rawbytes", "data:image/"),
    ("data:image/png;base64,***", "not valid base64"),
    ("", "needs a url"),
])
def test_openai_image_urls_are_data_urls_only(server, url, needle):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_images_must_be_base64_strings(server):
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "images": [5]})
        assert r.status_code == 400 and '"images"' in r.json()["error"]
        r = http.post("/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x", "images": "abc"}]})
        assert r.status_code == 400 and "messages[0].images" in r.json()["error"]
