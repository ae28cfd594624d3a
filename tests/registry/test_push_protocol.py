"""Push against a scripted registry: Ollama's redirected uploads (307 to a signed URL, ETag
on the final PUT), a chunk that fails once and is sent again, and what the registry sees."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pollama.store.manifest import MediaType
from pollama.store.registry import TransferSettings, push_model
from pollama.store.store import Store

CHUNK = 1024
SETTINGS = TransferSettings(min_part_size=CHUNK, max_part_size=CHUNK, backoff=0.01, retries=2)


class UploadRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, redirect: bool, fail_patch_at: int | None = None):
        super().__init__(("127.0.0.1", 0), UploadHandler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.redirect = redirect
        self.fail_patch_at = fail_patch_at  # the offset whose first PATCH answers 500
        self.uploads: dict[str, bytearray] = {}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.final_queries: list[dict] = []


class UploadHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, code: int, headers: dict | None = None, body: bytes = b""):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_one(self):
        server: UploadRegistry = self.server  # type: ignore[assignment]
        url = urlsplit(self.path)
        server.log.append((self.command, self.path))
        if self.command == "HEAD" and "/blobs/" in url.path:
            digest = url.path.rpartition("/")[2]
            return self.reply(200 if digest in server.blobs else 404, {"Content-Length": "0"})
        if self.command == "POST" and url.path.endswith("/blobs/uploads/"):
            self.body()
            upload = f"u{len(server.uploads)}"
            server.uploads[upload] = bytearray()
            return self.reply(202, {"Location": f"/upload/{upload}", "Range": "0-0"})
        if url.path.startswith("/upload/"):
            upload = server.uploads[url.path.rpartition("/")[2]]
            if self.command == "PATCH":
                start = int(self.headers["Content-Range"].split("-")[0])
                data = self.body()
                assert start == len(upload), (start, len(upload))
                if server.fail_patch_at == start:
                    server.fail_patch_at = None
                    return self.reply(500, body=b'{"errors":[{"message":"try again"}]}')
                if server.redirect:
                    return self.reply(307, {"Location": f"/signed{url.path}?part={start}"})
                upload.extend(data)
                return self.reply(202, {"Location": url.path, "Range": f"0-{len(upload) - 1}"})
            if self.command == "GET":
                return self.reply(204, {"Range": f"0-{max(len(upload) - 1, 0)}", "Location": url.path})
            if self.command == "PUT":
                self.body()
                query = parse_qs(url.query)
                server.final_queries.append(query)
                digest = query["digest"][0]
                if "sha256:" + hashlib.sha256(upload).hexdigest() != digest:
                    return self.reply(400, body=b'{"errors":[{"message":"digest invalid"}]}')
                server.blobs[digest] = bytes(upload)
                return self.reply(201, {"Location": f"/v2/blobs/{digest}"})
        if url.path.startswith("/signed/upload/") and self.command == "PUT":
            upload = server.uploads[url.path.rpartition("/")[2]]
            upload.extend(self.body())
            return self.reply(200, {"ETag": '"x"'})
        if "/manifests/" in url.path and self.command == "PUT":
            server.manifests[url.path] = self.body()
            return self.reply(201)
        self.body()
        return self.reply(404)

    do_HEAD = do_GET = do_POST = do_PATCH = do_PUT = handle_one


@pytest.fixture
def model_store(tmp_path):
    """A store with a 3.5 KiB 'model' (four chunks) under a name for the fake registry (set later)."""
    store = Store(tmp_path / "models", hash_cache=None)
    weights = b"GGUF" + bytes(range(256)) * 14
    layer = store.add_layer(weights, MediaType.MODEL)
    return store, layer, weights


def start(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("redirect", [False, True], ids=["distribution", "ollama-redirects"])
def test_chunked_upload_and_manifest(model_store, redirect):
    store, layer, weights = model_store
    server = start(UploadRegistry(redirect=redirect))
    try:
        name = f"{server.host}/me/model:latest"
        store.write_manifest(name, {"model_format": "gguf"}, [layer])
        updates: list[dict] = []
        result = push_model(store, name, insecure=True, progress=updates.append, settings=SETTINGS)
        assert server.blobs[layer.digest] == weights
        manifest = store.read_manifest(name)
        assert server.manifests["/v2/me/model/manifests/latest"] == manifest.path.read_bytes()
        assert result.transferred_blobs == 2 and result.transferred_bytes == manifest.size
        patches = [p for m, p in server.log if m == "PATCH"]
        assert len(patches) == 4 + 1  # four chunks of the model, one of the config
        final = next(q for q in server.final_queries if q["digest"] == [layer.digest])
        if redirect:
            md5s = b"".join(hashlib.md5(weights[i : i + CHUNK]).digest() for i in range(0, len(weights), CHUNK))
            assert final["etag"] == [f"{hashlib.md5(md5s).hexdigest()}-4"]
        else:
            assert "etag" not in final
        model = [u for u in updates if u.get("digest") == layer.digest]
        assert model[-1]["completed"] == layer.size and all(u["completed"] <= layer.size for u in model)
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_chunk_is_sent_again(model_store):
    store, layer, weights = model_store
    server = start(UploadRegistry(redirect=False, fail_patch_at=2 * CHUNK))
    try:
        name = f"{server.host}/me/model:latest"
        store.write_manifest(name, {"model_format": "gguf"}, [layer])
        push_model(store, name, insecure=True, settings=SETTINGS)
        assert server.blobs[layer.digest] == weights
        assert ("GET", "/upload/u0") in server.log  # asked where the upload stood
    finally:
        server.shutdown()
        server.server_close()


def test_damaged_local_blob_is_never_pushed(model_store):
    store, layer, _ = model_store
    server = start(UploadRegistry(redirect=False))
    try:
        name = f"{server.host}/me/model:latest"
        store.write_manifest(name, {"model_format": "gguf"}, [layer])
        path = store.blob_path(layer.digest)
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
        store.verifier.forget(path)
        with pytest.raises(ValueError, match="does not match its digest"):
            push_model(store, name, insecure=True, settings=SETTINGS)
        assert not server.blobs and not server.manifests
    finally:
        server.shutdown()
        server.server_close()


def test_push_of_a_missing_model_says_so(tmp_path):
    with pytest.raises(ValueError, match="model 'nobody/none' not found"):
        push_model(Store(tmp_path / "m", hash_cache=None), "nobody/none")
