"""Who may call the server: a foreign web page is refused before any route runs (as Ollama
refuses it), and with API keys set every route but `/` and `/api/version` needs one.

Against a real `pollama serve` over real HTTP; the clients are the official ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from cliproc import assert_one_line_error, pollama

EVIL = "http://evil.example"
BLOB = b"not a model, but a blob a page would plant\n"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
SMALL = {"temperature": 0, "num_predict": 1}

# Every route that changes the store or runs a model, with a body that would succeed.
# (method, path, JSON body or raw bytes)
ACTING_ROUTES = [
    ("POST", f"/api/blobs/{BLOB_DIGEST}", BLOB),
    ("POST", "/api/create", {"model": "planted", "files": {"m.gguf": BLOB_DIGEST}}),
    ("POST", "/api/copy", {"source": "victim", "destination": "registry.evil.example/x/stolen"}),
    ("DELETE", "/api/delete", {"model": "victim"}),
    ("POST", "/api/pull", {"model": "registry.evil.example/x/trojan", "insecure": True}),
    ("POST", "/api/push", {"model": "victim", "insecure": True}),
    ("POST", "/api/generate", {"model": "smollm2", "prompt": "Hi", "options": SMALL}),
    ("POST", "/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "options": SMALL}),
    ("POST", "/api/embed", {"model": "smollm2", "input": "Hi"}),
    ("POST", "/api/embeddings", {"model": "smollm2", "prompt": "Hi"}),
    ("POST", "/api/tokenize", {"model": "smollm2", "content": "Hi"}),
    ("POST", "/api/detokenize", {"model": "smollm2", "tokens": [1]}),
    ("POST", "/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": "smollm2", "prompt": "Hi", "max_tokens": 1}),
    ("POST", "/v1/embeddings", {"model": "smollm2", "input": "Hi"}),
]
READING_ROUTES = [("GET", "/api/tags"), ("GET", "/api/ps"), ("POST", "/api/show"), ("GET", "/v1/models"),
                  ("HEAD", f"/api/blobs/{BLOB_DIGEST}")]


def store_snapshot(models: Path) -> dict[str, tuple[int, int]]:
    """Every file under the store with its size and mtime: any write shows."""
    if not models.exists():
        return {}
    return {str(p.relative_to(models)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(models.rglob("*")) if p.is_file() or p.is_symlink()}


def send_simple(http: httpx.Client, method: str, path: str, body, headers: dict[str, str]) -> httpx.Response:
    """What a page's fetch() with mode 'no-cors' sends: a simple content type, so no preflight."""
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return http.request(method, path, content=content, headers={"Content-Type": "text/plain", **headers})


@pytest.fixture(scope="module")
def guarded(server_factory, smollm2_path):
    """A server with a model 'victim' in its store and one extra allowed origin."""
    srv = server_factory(OLLAMA_ORIGINS="https://chat.example.org,https://*.trusted.example")
    client = ollama.Client(host=srv.url, timeout=120)
    client.create(model="victim", files={"victim.gguf": client.create_blob(smollm2_path)})
    return srv


@pytest.mark.parametrize("method, path, body", ACTING_ROUTES, ids=[f"{m} {p.split('/sha')[0]}" for m, p, _ in ACTING_ROUTES])
def test_a_foreign_page_is_refused_before_the_route_runs(guarded, method, path, body):
    before = store_snapshot(guarded.models)
    with guarded.http() as http:
        r = send_simple(http, method, path, body, {"Origin": EVIL})
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "origin" in r.json()["error"] and "access-control-allow-origin" not in r.headers
        # The preflight a non-simple request would need is refused too.
        pre = http.options(path, headers={"Origin": EVIL, "Access-Control-Request-Method": method})
        # gin-contrib/cors (Ollama's) answers a refused preflight with a bare 403.
        assert (pre.status_code, pre.content) == (403, b"") and "access-control-allow-origin" not in pre.headers
    assert store_snapshot(guarded.models) == before


def test_refused_requests_changed_nothing_and_the_same_requests_without_origin_act(guarded):
    with guarded.http() as http:
        for method, path in READING_ROUTES:
            body = b'{"model": "victim"}' if method == "POST" else None
            r = http.request(method, path, content=body, headers={"Origin": EVIL})
            assert r.status_code == 403, (path, r.status_code)
        assert http.head(f"/api/blobs/{BLOB_DIGEST}").status_code == 404  # the page's upload did not land
        assert [m["name"] for m in http.get("/api/tags").json()["models"]] == ["victim:latest"]
        # A program (no Origin) and a local page may do what the foreign page could not.
        assert send_simple(http, "POST", f"/api/blobs/{BLOB_DIGEST}", BLOB, {}).status_code == 201
        r = send_simple(http, "POST", "/api/copy", {"source": "victim", "destination": "copied"},
                        {"Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = send_simple(http, "POST", "/api/generate", {"model": "victim", "prompt": "Hi", "stream": False,
                                                        "options": SMALL}, {"Origin": "http://127.0.0.1:8080"})
        assert r.status_code == 200 and r.json()["done"] is True
        assert sorted(m["name"] for m in http.get("/api/tags").json()["models"]) == ["copied:latest", "victim:latest"]


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost", True), ("https://localhost:8443", True), ("http://127.0.0.1:3000", True),
    ("http://0.0.0.0:8080", True), ("http://[::1]:5173", True), ("app://obsidian.md", True),
    ("file://", True), ("tauri://localhost", True), ("vscode-webview://abc", True),
    ("chrome-extension://abcdef", True), ("moz-extension://abcdef", True),
    ("https://chat.example.org", True), ("https://app.trusted.example", True),  # OLLAMA_ORIGINS
    ("http://chat.example.org", False), ("https://trusted.example.evil.example", False),
    ("http://localhost.evil.example", False), ("http://127.0.0.1.evil.example", False), ("null", False),
    (EVIL, False),
])
def test_allowed_origins(guarded, origin, allowed):
    with guarded.http() as http:
        r = http.get("/api/version", headers={"Origin": origin})
        pre = http.options("/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "content-type"})
    if allowed:
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        # An allowed preflight: 204 and no body, as gin-contrib/cors answers (its default status).
        assert (pre.status_code, pre.content) == (204, b"") and pre.headers["access-control-allow-origin"] == origin
    else:
        assert r.status_code == 403 and (pre.status_code, pre.content) == (403, b"")


def test_a_same_origin_request_is_not_cross_site(guarded):
    # As gin's CORS handler: an Origin that is the request's own scheme and Host passes.
    with guarded.http() as http:
        assert http.get("/api/tags", headers={"Origin": guarded.url}).status_code == 200


KEYS = ("k-first-0123456789", "k-second-abcdef")


@pytest.fixture(scope="module")
def keyed(server_factory):
    return server_factory(POLLAMA_API_KEYS=",".join(KEYS))


PROTECTED = [(m, p) for m, p, _ in ACTING_ROUTES] + READING_ROUTES


@pytest.mark.parametrize("key", [None, "wrong", KEYS[0] + "x", KEYS[0][:-1]])
def test_without_the_key_every_protected_route_is_401(keyed, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with keyed.http() as http:
        for method, path in PROTECTED:
            r = http.request(method, path, content=b'{"model": "smollm2"}', headers=headers)
            assert r.status_code == 401, (path, key, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                error = r.json()["error"]
                message = error["message"] if path.startswith("/v1/") else error
                assert "API key" in message
        for path in ("/", "/api/version"):
            assert http.get(path, headers=headers).status_code == 200
        # Only Bearer counts: the key in another scheme is not a key.
        r = http.get("/api/tags", headers={"Authorization": f"Basic {KEYS[0]}"})
        assert r.status_code == 401


def test_a_browser_preflight_needs_no_key_and_an_allowed_page_reads_the_401(keyed):
    with keyed.http() as http:
        pre = http.options("/api/chat", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 204 and "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = http.get("/api/tags", headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        # A foreign page is refused before its key would be looked at.
        assert http.get("/api/tags", headers={"Origin": EVIL, "Authorization": f"Bearer {KEYS[0]}"}).status_code == 403


def test_the_official_clients_work_with_either_key(keyed):
    for key in KEYS:
        client = ollama.Client(host=keyed.url, timeout=120, headers={"Authorization": f"Bearer {key}"})
        assert client.generate(model="smollm2", prompt="Hi", options=SMALL).done
        assert client.list().models == []
        oai = openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, timeout=120, max_retries=0)
        answer = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        assert answer.choices[0].finish_reason == "length"
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed.url, timeout=120, headers={"Authorization": "Bearer wrong"}).list()
    assert refused.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as refused_oai:
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert refused_oai.value.code == "invalid_api_key"


def test_the_cli_sends_the_key_from_the_same_variables(keyed):
    base = {"OLLAMA_HOST": keyed.host, "OLLAMA_API_KEY": "", "POLLAMA_API_KEYS": ""}
    for env in ({"OLLAMA_API_KEY": KEYS[1]}, {"POLLAMA_API_KEYS": ",".join(KEYS)}):
        ran = pollama("run", "smollm2", "Hi", "--temperature", "0", "--num-predict", "2", env={**base, **env})
        assert ran.returncode == 0, ran.stderr
        listed = pollama("list", env={**base, **env})
        assert listed.returncode == 0 and listed.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert_one_line_error(pollama("list", env={**base, "OLLAMA_API_KEY": "wrong"}), "API key")
    assert_one_line_error(pollama("ps", env=base), "API key")


def test_no_key_is_needed_when_none_is_set(server):
    with server.http() as http:
        assert http.get("/api/tags").status_code == 200
