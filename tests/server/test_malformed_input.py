"""Malformed input of every kind gets a 4xx naming the fault (or, from the CLI, one `Error:`
line): never a 500, a traceback, a reset connection or an aborted process.

Every JSON route of a real `pollama serve` is swept with JSON nested past any stack, a value
of the wrong JSON type in each field it reads, and lone UTF-16 surrogates; then the cases
found by hand: hostile model files (bytes that are not UTF-8, a negative norm epsilon), a
safetensors header nested 50000 deep, and a blob upload that runs out of disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess

import numpy as np
import pytest
from cliproc import assert_one_line_error, pollama

from pollama.server.http import MAX_JSON_DEPTH

STR, BOOL, INT, NUM, ARR, OBJ = "string", "boolean", "integer", "number", "array", "object"
# Values of another JSON type than the field takes (an integer field also refuses 1.5).
WRONG: dict[str, list] = {
    STR: [5, True, [], {}],
    BOOL: [1, "x", [], {}],
    INT: [1.5, "1", True, [], {}],
    NUM: ["x", True, [], {}],
    ARR: ["x", 5, {}],
    OBJ: ["x", 5, []],
    # Fields that take more than one type: what none of them is.
    "think": [1, [], {}],
    "keep_alive": [True, [], {}],
    "format": [5, True, []],
    "input": [5, True, {}, [1]],
    "license": [5, True, {}, [1]],
    "stop": [5, True, {}, [1]],
    "tool_choice": [5, True, []],
}

MSG = [{"role": "user", "content": "hi"}]
SMALL = {"num_predict": 1, "temperature": 0}
# A request per route that would succeed (or fail late, for pull/push and delete) with nothing
# wrong in it, and the fields each route reads with their type.
NATIVE_GENERATION = {"stream": BOOL, "options": OBJ, "think": "think", "logprobs": BOOL, "top_logprobs": INT,
                     "_debug_render_only": BOOL, "keep_alive": "keep_alive", "format": "format"}
OPENAI_GENERATION = {"model": STR, "stream": BOOL, "stream_options": OBJ, "max_tokens": INT, "temperature": NUM,
                     "top_p": NUM, "frequency_penalty": NUM, "presence_penalty": NUM, "stop": "stop", "seed": INT,
                     "n": INT, "user": STR, "logit_bias": OBJ}
ROUTES: dict[tuple[str, str], tuple[dict, dict[str, str]]] = {
    ("POST", "/api/generate"): (
        {"model": "smollm2", "prompt": "hi", "stream": False, "options": SMALL},
        {"model": STR, "prompt": STR, "suffix": STR, "system": STR, "template": STR, "context": ARR, "raw": BOOL,
         "images": ARR, **NATIVE_GENERATION}),
    ("POST", "/api/chat"): (
        {"model": "smollm2", "messages": MSG, "stream": False, "options": SMALL},
        {"model": STR, "messages": ARR, "tools": ARR, "truncate": BOOL, **NATIVE_GENERATION}),
    ("POST", "/api/embed"): (
        {"model": "smollm2", "input": "hi"},
        {"model": STR, "input": "input", "truncate": BOOL, "dimensions": INT, "options": OBJ,
         "keep_alive": "keep_alive"}),
    ("POST", "/api/embeddings"): (
        {"model": "smollm2", "prompt": "hi"},
        {"model": STR, "prompt": STR, "options": OBJ, "keep_alive": "keep_alive"}),
    ("POST", "/api/tokenize"): (
        {"model": "smollm2", "content": "hi"},
        {"model": STR, "content": STR, "options": OBJ, "keep_alive": "keep_alive"}),
    ("POST", "/api/detokenize"): (
        {"model": "smollm2", "tokens": [1, 2]},
        {"model": STR, "tokens": ARR, "options": OBJ, "keep_alive": "keep_alive"}),
    ("POST", "/api/show"): ({"model": "smollm2"}, {"model": STR, "name": STR, "verbose": BOOL}),
    ("POST", "/api/copy"): ({"source": "smollm2", "destination": "malformed-copy"}, {"source": STR, "destination": STR}),
    ("DELETE", "/api/delete"): ({"model": "no-such-model"}, {"model": STR, "name": STR}),
    ("POST", "/api/create"): (
        {"model": "malformed-create", "from": "no-such-model", "stream": False},
        {"model": STR, "name": STR, "from": STR, "files": OBJ, "adapters": OBJ, "template": STR, "system": STR,
         "parameters": OBJ, "license": "license", "messages": ARR, "quantize": STR, "quantization": STR,
         "stream": BOOL}),
    # A registry nothing listens on: a request that got past the checks fails at once.
    ("POST", "/api/pull"): (
        {"model": "127.0.0.1:9/x/y", "stream": False, "insecure": True},
        {"model": STR, "name": STR, "insecure": BOOL, "stream": BOOL}),
    ("POST", "/api/push"): (
        {"model": "127.0.0.1:9/x/y", "stream": False, "insecure": True},
        {"model": STR, "name": STR, "insecure": BOOL, "stream": BOOL}),
    ("POST", "/v1/chat/completions"): (
        {"model": "smollm2", "messages": MSG, "max_tokens": 1},
        {**OPENAI_GENERATION, "messages": ARR, "max_completion_tokens": INT, "response_format": OBJ, "tools": ARR,
         "tool_choice": "tool_choice", "logprobs": BOOL, "top_logprobs": INT, "reasoning_effort": STR,
         "reasoning": OBJ, "parallel_tool_calls": BOOL}),
    ("POST", "/v1/completions"): (
        {"model": "smollm2", "prompt": "hi", "max_tokens": 1},
        {**OPENAI_GENERATION, "prompt": "stop", "suffix": STR, "logprobs": INT, "echo": BOOL, "best_of": INT}),
    ("POST", "/v1/embeddings"): (
        {"model": "smollm2", "input": "hi"},
        {"model": STR, "input": "input", "encoding_format": STR, "dimensions": INT, "user": STR}),
}
ROUTE_IDS = [path for _, path in ROUTES]


def error_message(r) -> str:
    """The error text of a 4xx: Ollama's {"error": "..."}, or OpenAI's shape on /v1 routes."""
    body = r.json()
    if r.request.url.path.startswith("/v1/"):
        error = body["error"]
        assert error["type"] == "invalid_request_error", body
        return error["message"]
    assert isinstance(body["error"], str), body
    return body["error"]


def send(http, method: str, path: str, *, json_body=None, content: bytes | None = None):
    if content is None:
        content = json.dumps(json_body).encode()
    return http.request(method, path, content=content, headers={"Content-Type": "application/json"})


def assert_4xx(r, *needles: str) -> str:
    assert 400 <= r.status_code < 500, (r.request.url.path, r.status_code, r.text[:300])
    message = error_message(r)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# -- nesting --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", list(ROUTES), ids=ROUTE_IDS)
def test_json_nested_100000_deep_is_a_400(server, method, path):
    base, _ = ROUTES[(method, path)]
    deep = b"[" * 100_000 + b"]" * 100_000
    with server.http() as http:
        # Inside the object, as a whole body, and inside a field the route reads.
        r = send(http, method, path, content=json.dumps(base)[:-1].encode() + b', "x": ' + deep + b"}")
        assert_4xx(r, "nested")
        assert_4xx(send(http, method, path, content=deep), "nested")
        field = next(iter(ROUTES[(method, path)][1]))
        assert_4xx(send(http, method, path, content=b'{"' + field.encode() + b'": ' + deep + b"}"), "nested")
        # Just past the limit, as objects.
        body = dict(base)
        inner: object = "x"
        for _ in range(MAX_JSON_DEPTH):
            inner = {"a": inner}
        body["x"] = inner
        assert_4xx(send(http, method, path, json_body=body), "nested", str(MAX_JSON_DEPTH))
        assert http.get("/api/version").status_code == 200


def nest(depth: int, leaf: object = "x") -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def test_json_just_inside_the_depth_limit_is_served(server):
    """What the limit lets through is parsed and walked (templates, schemas, tool calls)
    without a RecursionError anywhere."""
    d = MAX_JSON_DEPTH - 2
    schema: dict = {"type": "string"}
    for _ in range(d // 2 - 2):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    cases = [
        ("/api/generate", {"model": "smollm2", "prompt": "hi", "stream": False, "options": SMALL, "format": schema}),
        ("/api/chat", {"model": "smollm2", "stream": False, "options": SMALL, "messages": [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": nest(d - 6)}}]},
            {"role": "user", "content": "hi", "extra": nest(d - 3)}]}),
        ("/v1/chat/completions", {"model": "smollm2", "max_tokens": 1, "messages": [
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": "c", "type": "function",
                             "function": {"name": "f", "arguments": json.dumps(nest(d))}}]}, *MSG]}),
    ]
    with server.http() as http:
        for path, body in cases:
            r = http.post(path, json=body)
            assert r.status_code == 200, (path, r.text[:300])
        # Tool call arguments are JSON in a string: held to the same limit.
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "max_tokens": 1, "messages": [
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
                "name": "f", "arguments": "[" * 5000 + "]" * 5000}}]}, *MSG]})
        assert_4xx(r, "nested")


# -- types ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", list(ROUTES), ids=ROUTE_IDS)
def test_a_value_of_the_wrong_type_in_any_field_is_a_400(server, method, path):
    base, fields = ROUTES[(method, path)]
    failures = []
    with server.http() as http:
        for name, kind in fields.items():
            for value in WRONG[kind]:
                r = send(http, method, path, json_body={**base, name: value})
                if not 400 <= r.status_code < 500:
                    failures.append((name, value, r.status_code, r.text[:200]))
                    continue
                error_message(r)  # the route's error shape
    assert not failures, failures


@pytest.mark.parametrize("field, value", [
    ("stream", 1), ("stream", "x"), ("stream", []), ("stream", {}), ("seed", 1.5), ("n", True),
    ("max_tokens", -1), ("temperature", "hot"), ("stream_options", {"include_usage": "yes"}),
])
def test_openai_chat_refuses_wrong_types_in_openais_error_shape(server, field, value):
    with server.http() as http:
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MSG, "max_tokens": 1, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert f'"{field}"' in r.json()["error"]["message"] or field.split("_")[0] in r.json()["error"]["message"]


@pytest.mark.parametrize("raw, needle", [
    (b'{"model": "smollm2", "prompt": "hi", "options": {"temperature": NaN}}', "NaN"),
    (b'{"model": "smollm2", "prompt": "hi", "options": {"temperature": Infinity}}', "Infinity"),
    (b'{"model": "smollm2", "prompt": "hi", "options": {"temperature": 1e999}}', "out of range"),
    (b'{"model": "smollm2", "prompt": "hi", "options": {"seed": ' + b"9" * 5000 + b"}}", "digits"),
    (b'{"model": "smollm2", "prompt": "hi", "options": {"seed": 18446744073709551616}}', "out of range"),
    (b'{"model": "smollm2", "prompt": "hi", "context": [1e400]}', "out of range"),
    (b'\xef\xbb\xbf{"model": "smollm2", "prompt": "hi"}', "BOM"),
])
def test_numbers_and_bytes_json_does_not_have_are_a_400(server, raw, needle):
    with server.http() as http:
        assert_4xx(send(http, "POST", "/api/generate", content=raw), needle)


@pytest.mark.parametrize("license_", [5, True, 1.5, {"a": "b"}, [1], ["ok", None]])
def test_create_license_must_be_text(server, license_):
    with server.http() as http:
        r = http.post("/api/create", json={"model": "lic", "from": "smollm2", "license": license_})
    assert_4xx(r, '"license"')


def test_a_keep_alive_too_long_for_a_timer_is_forever(server):
    with server.http() as http:
        for keep_alive in (2**63 - 1, 1e300, "100000000000h"):
            r = http.post("/api/generate", json={"model": "smollm2", "prompt": "", "keep_alive": keep_alive})
            assert r.status_code == 200, (keep_alive, r.text)
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "", "keep_alive": "5m"})
        assert r.status_code == 200


# -- lone surrogates ------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", list(ROUTES), ids=ROUTE_IDS)
def test_lone_surrogates_are_a_400(server, method, path):
    base, fields = ROUTES[(method, path)]
    strings = [name for name, kind in fields.items() if kind == STR] or ["model"]
    with server.http() as http:
        for name in strings:
            for escape in ("\\ud800", "\\udfff", "a\\udc80b"):
                body = json.dumps({**base, name: "@placeholder@"})
                content = body.replace('"@placeholder@"', f'"{escape}"').encode()
                assert_4xx(send(http, method, path, content=content), "surrogate", name)
        # In a key, deep inside, and as raw bytes (UTF-8 cannot encode a surrogate).
        assert_4xx(send(http, method, path, content=b'{"\\ud800": 1, "model": "smollm2"}'), "surrogate")
        body = json.dumps({**base, "x": [{"y": "\udc00"}]}, ensure_ascii=True).encode()
        assert_4xx(send(http, method, path, content=body), "surrogate", "x[0].y")
        assert_4xx(send(http, method, path, content=b'{"model": "\xed\xa0\x80"}'), "UTF-8")


def test_a_surrogate_pair_is_a_character(server):
    with server.http() as http:
        r = http.post("/api/tokenize", content=b'{"model": "smollm2", "content": "\\ud83d\\ude00"}')
        assert r.status_code == 200, r.text
        text = http.post("/api/detokenize", json={"model": "smollm2", "tokens": r.json()["tokens"]}).json()["content"]
        assert text == "\U0001f600"


def test_show_with_a_lone_surrogate_in_the_name_is_a_400(server):
    with server.http() as http:
        for key in ("model", "name"):
            r = http.post("/api/show", content=b'{"' + key.encode() + b'": "\\ud800"}')
            assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text
        r = http.post("/api/create", content=b'{"model": "x", "files": {"a\\ud800.gguf": "sha256:'
                      + b"0" * 64 + b'"}}')
        assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text


# -- hostile model files --------------------------------------------------------------------------
def smollm2_variant(smollm2_path, out, **metadata):
    """A copy of SmolLM2 with some metadata replaced."""
    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf

    with GGUFFile(smollm2_path) as g:
        tensors = [(i.name, np.array(g.tensor_bytes(i.name)), i.type, i.shape) for i in g.tensors.values()]
        write_gguf(out, {**g.metadata, **metadata}, tensors)
    return out


def upload(http, path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def not_utf8(raw: bytes) -> str:
    """Bytes as the GGUF reader keeps them when they are not UTF-8 (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def test_metadata_that_is_not_utf8_is_shown_with_replacement_characters(server, smollm2_path, tmp_path):
    """Go keeps such bytes in Ollama's strings and writes each as U+FFFD in JSON: the same here."""
    gguf = smollm2_variant(smollm2_path, tmp_path / "notutf8.gguf", **{
        "general.name": not_utf8(b"bad\xff\xfe name"),
        "general.description": not_utf8(b"\xc3"),
        "general.tags": ["ok", not_utf8(b"t\x80g")],
        "tokenizer.chat_template": not_utf8(
            b"{# \xff #}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            b"<|im_start|>assistant\n")})
    with server.http() as http:
        r = http.post("/api/create", json={"model": "notutf8", "files": {"notutf8.gguf": upload(http, gguf)},
                                           "stream": False})
        assert r.status_code == 200, r.text
        for verbose in (False, True):
            r = http.post("/api/show", json={"model": "notutf8", "verbose": verbose})
            assert r.status_code == 200, r.text
            info = r.json()["model_info"]
            assert info["general.name"] == "bad\ufffd\ufffd name" and info["general.description"] == "\ufffd"
            assert info["general.tags"] == ["ok", "t\ufffdg"]
        r = http.post("/api/chat", json={"model": "notutf8", "messages": MSG, "stream": False, "options": SMALL})
        assert r.status_code == 200, r.text
        assert http.get("/api/tags").status_code == 200
        assert http.request("DELETE", "/api/delete", json={"model": "notutf8"}).status_code == 200


def test_a_tensor_name_that_is_not_utf8_is_refused_at_create(server, smollm2_path, tmp_path):
    data = smollm2_path.read_bytes()
    assert data.count(b"output_norm.weight") == 1
    bad = tmp_path / "badtensor.gguf"
    bad.write_bytes(data.replace(b"output_norm.weight", b"output_norm\xffweight"))
    with server.http() as http:
        r = http.post("/api/create", json={"model": "badtensor", "files": {"badtensor.gguf": upload(http, bad)},
                                           "stream": False})
        assert_4xx(r, "not valid UTF-8", "output_norm")
        assert http.post("/api/show", json={"model": "badtensor"}).status_code == 404


@pytest.mark.parametrize("key, value, needle", [
    ("llama.attention.layer_norm_rms_epsilon", -1.0, "must not be negative"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), "finite"),
    ("llama.rope.freq_base", 0.0, "must be positive"),
    ("llama.rope.dimension_count", 63, "must be even"),
    ("llama.attention.head_count", 18, "head_count 18"),
])
def test_hyper_parameters_ggml_would_abort_on_are_a_load_error_naming_the_key(
        server, smollm2_path, tmp_path, key, value, needle):
    gguf = smollm2_variant(smollm2_path, tmp_path / "hparams.gguf", **{key: value})
    name = f"hparams-{abs(hash((key, str(value)))) % 10**6}"
    with server.http() as http:
        r = http.post("/api/create", json={"model": name, "files": {"m.gguf": upload(http, gguf)}, "stream": False})
        assert r.status_code == 200, r.text
        r = http.post("/api/chat", json={"model": name, "messages": MSG, "stream": False, "options": SMALL})
        error = r.json()["error"]
        # A load error naming the key (400: the file's fault; Ollama answers 500), not a killed runner.
        assert r.status_code == 400 and "error loading model" in error, r.text
        assert key.split(".", 1)[1].split(".")[-1] in error and needle in error, error
        assert "signal" not in error and "\n" not in error
        ok = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": SMALL})
        assert ok.status_code == 200
        http.request("DELETE", "/api/delete", json={"model": name})


# -- the CLI --------------------------------------------------------------------------------------
def safetensors_file(path, header: bytes):
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.parametrize("header, needles", [
    (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", ("nested too deeply",)),
    (b'{"__metadata__": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}", ("nested too deeply",)),
    (b'{"a": {"dtype": "F32", "shape": ' + b"[" * 900 + b"]" * 900 + b', "data_offsets": [0, 0]}}', ("bad shape",)),
    (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}', ("not valid JSON",)),
])
def test_tensors_of_a_hostile_safetensors_header_is_one_error_line(tmp_path, header, needles):
    result = pollama("tensors", str(safetensors_file(tmp_path / "deep.safetensors", header)))
    line = assert_one_line_error(result, "deep.safetensors", *needles)
    assert len(line) < 300


def test_tensors_of_a_deep_safetensors_index_is_one_error_line(tmp_path):
    safetensors_file(tmp_path / "model-00001.safetensors", b"{}")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 50_000 + "]" * 50_000 + "}")
    from pollama.fs.safetensors import SafetensorsError, open_folder

    with pytest.raises(SafetensorsError, match="nested too deeply"):
        open_folder(tmp_path)


# -- out of disk during a blob upload -------------------------------------------------------------
def _assert_out_of_space_answer(r, digest):
    assert r.status_code == 507, (r.status_code, r.text)
    error = r.json()["error"]
    assert "No space left on device" in error and digest in error, error


def test_blob_upload_out_of_disk_tells_the_client_on_a_real_server(server_factory, tmp_path):
    """A real server whose store is a 1 MiB tmpfs: the client, still sending, gets the OS's
    message (not a reset connection), and no partial blob is left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the in-process test below covers the handler)")
    models = tmp_path / "models"
    models.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(models)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs as root: {mounted.stderr}"
    server = None
    try:
        server = server_factory(OLLAMA_MODELS=str(models))
        data = os.urandom(4 << 20)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with server.http() as http:
            _assert_out_of_space_answer(http.post(f"/api/blobs/{digest}", content=data), digest)
            # Streamed in chunks, as clients send files.
            chunks = (data[i:i + 65536] for i in range(0, len(data), 65536))
            _assert_out_of_space_answer(http.post(f"/api/blobs/{digest}", content=chunks), digest)
            assert http.head(f"/api/blobs/{digest}").status_code == 404
            assert not [p.name for p in (models / "blobs").iterdir()]
            # The space came back: a blob that fits goes in.
            small = b"fits"
            small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
            assert http.post(f"/api/blobs/{small_digest}", content=small).status_code == 201
    finally:
        if server is not None:  # (the fixture's own stop later finds it gone)
            server.proc.terminate()
            server.proc.wait(30)
        subprocess.run(["umount", "-l", str(models)], check=False)


def test_blob_upload_out_of_disk_tells_the_client_in_process(tmp_path, monkeypatch):
    """The same through the app in this process, the disk filling up after 1 MiB."""
    from starlette.testclient import TestClient

    import pollama.store.blobs as blobs_module
    from pollama.server.app import create_app
    from pollama.server.config import ServerConfig
    from pollama.store.store import Store

    real_temp_file = blobs_module._temp_file

    class FillingFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, chunk):
            self.written += len(chunk)
            if self.written > 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(chunk)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def filling_temp_file(directory):
        path, f = real_temp_file(directory)
        return path, FillingFile(f)

    monkeypatch.setattr(blobs_module, "_temp_file", filling_temp_file)
    store = Store(tmp_path / "models")
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with TestClient(create_app(ServerConfig.from_env(), store)) as client:
        _assert_out_of_space_answer(client.post(f"/api/blobs/{digest}", content=data), digest)
        assert client.head(f"/api/blobs/{digest}").status_code == 404
    assert not list((tmp_path / "models" / "blobs").iterdir())
