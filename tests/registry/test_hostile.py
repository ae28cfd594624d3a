"""A hostile registry (a small local server) cannot make a pull write outside the store,
leave a blob that does not match its digest, follow it to other schemes, or fill the disk."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pollama.store.errors import DigestMismatch, StoreError
from pollama.store.manifest import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, MediaType
from pollama.store.names import parse_name
from pollama.store.registry import RegistryError, TransferSettings, pull_model
from pollama.store.registry_client import RegistryClient
from pollama.store.store import Store

CONFIG = b'{"model_format":"gguf","architecture":"amd64","os":"linux"}\n'
WEIGHTS = b"GGUF" + bytes(range(256)) * 40


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(layers, config=CONFIG) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest_of(config), "size": len(config)},
            "layers": layers,
        }
    ).encode()


def model_layer(data: bytes = WEIGHTS, **changes) -> dict:
    return {"mediaType": MediaType.MODEL, "digest": digest_of(data), "size": len(data)} | changes


class FakeRegistry(ThreadingHTTPServer):
    """Routes: path -> function(handler). Blobs not routed are served from self.blobs (ranges honoured)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, object] = {}
        self.blobs: dict[str, bytes] = {digest_of(CONFIG): CONFIG, digest_of(WEIGHTS): WEIGHTS}
        self.requests: list[tuple[str, str, dict]] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        server: FakeRegistry = self.server  # type: ignore[assignment]
        path = self.path.split("?")[0]
        server.requests.append((self.command, self.path, dict(self.headers)))
        route = server.routes.get(path)
        if route is not None:
            return route(self)
        digest = path.rpartition("/")[2]
        if "/blobs/" in path and digest in server.blobs:
            return send_range(self, server.blobs[digest])
        self.reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}')

    def reply(self, code: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def send_range(handler: Handler, data: bytes) -> None:
    spec = handler.headers.get("Range", "")
    if spec.startswith("bytes="):
        start, _, end = spec[6:].partition("-")
        start, end = int(start), min(int(end), len(data) - 1)
        handler.reply(206, data[start : end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
    else:
        handler.reply(200, data)


def endless(handler: Handler, status: int = 206) -> None:
    handler.send_response(status)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"x" * 65536
    try:
        while True:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.fixture
def fake():
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def quick():
    return TransferSettings(min_part_size=1024, max_part_size=4096, backoff=0.01, retries=2, stall_timeout=1.0, connect_timeout=2.0)


def serve_manifest(fake: FakeRegistry, data: bytes, name: str = "evil/model") -> str:
    fake.routes[f"/v2/{name}/manifests/latest"] = lambda h: h.reply(200, data, {"Content-Type": MANIFEST_MEDIA_TYPE})
    return f"{fake.host}/{name}:latest"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def pull_fails(fake, tmp_path, data: bytes, match: str, error=StoreError, settings=None) -> Path:
    """Pull a served manifest, expect error, and check nothing was left but empty dirs."""
    name = serve_manifest(fake, data)
    before = files_under(tmp_path)
    store = Store(tmp_path / "models", hash_cache=None)
    with pytest.raises(error, match=match):
        pull_model(store, name, insecure=True, settings=settings or TransferSettings(backoff=0.01, retries=1))
    created = files_under(tmp_path) - before
    assert all(p.startswith("models") for p in created), created  # nothing outside the store
    blobs = tmp_path / "models" / "blobs"
    left = [p.name for p in blobs.iterdir()] if blobs.is_dir() else []
    # No blob became visible, and the blob at fault left no partial download to resume from
    # (another blob's finished download may stay: the next pull verifies and uses it).
    assert not [n for n in left if "-partial" not in n], left
    assert not [n for n in left if n.startswith("sha256-" + digest_of(WEIGHTS)[7:])], left
    assert not (tmp_path / "models" / "manifests").exists()
    return tmp_path / "models"


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../etc/x", "sha256:abc", "sha256:" + "A" * 64, "sha512:" + "0" * 64, "sha256:" + "0" * 63 + "/", 7],
)
def test_layer_digests_that_are_not_sha256_hex_are_refused(fake, tmp_path, digest):
    pull_fails(fake, tmp_path, manifest([model_layer(digest=digest)]), r"invalid layer digest")


def test_config_digest_is_checked_too(fake, tmp_path):
    data = json.loads(manifest([model_layer()]))
    data["config"]["digest"] = "sha256:../../blobs/x"
    pull_fails(fake, tmp_path, json.dumps(data).encode(), r"invalid layer digest 'sha256:\.\./\.\./blobs/x'")


def test_unknown_media_types_are_refused(fake, tmp_path):
    pull_fails(fake, tmp_path, manifest([model_layer(mediaType="application/x-evil")]), r"unknown media type 'application/x-evil'")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode()
    pull_fails(fake, tmp_path, index, r"mediaType 'application/vnd\.oci\.image\.index\.v1\+json'")


def test_absurd_layer_sizes_are_refused(fake, tmp_path):
    pull_fails(fake, tmp_path, manifest([model_layer(size=1 << 50)]), r"is 1125899906842624 bytes, more than")
    pull_fails(fake, tmp_path, manifest([model_layer(size=-1)]), r"invalid size -1")
    template = b"{{ .Prompt }}"
    big_template = {"mediaType": MediaType.TEMPLATE, "digest": digest_of(template), "size": 1 << 30}
    pull_fails(fake, tmp_path, manifest([big_template]), r"more than the 67108864 allowed")


def test_blob_not_matching_its_digest_is_deleted(fake, tmp_path):
    fake.blobs[digest_of(WEIGHTS)] = WEIGHTS[:-1] + b"!"  # same size, other bytes
    pull_fails(fake, tmp_path, manifest([model_layer()]), r"blob sha256:[0-9a-f]{64}: downloaded blob has digest", DigestMismatch)


def test_blob_of_another_size_than_announced_is_refused(fake, tmp_path):
    fake.blobs[digest_of(WEIGHTS)] = WEIGHTS + b"more"
    pull_fails(fake, tmp_path, manifest([model_layer()]), r"registry says it has \d+ bytes, the manifest says")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/blob", "gopher://x/", "javascript:alert(1)"])
def test_redirects_to_other_schemes_are_refused(fake, tmp_path, target):
    fake.routes[f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"] = lambda h: h.reply(307, b"", {"Location": target})
    pull_fails(fake, tmp_path, manifest([model_layer()]), r"refusing redirect to .*only http and https")


def test_redirect_to_https_from_insecure_is_allowed_but_https_to_http_is_not(fake):
    client = RegistryClient(parse_name(f"{fake.host}/evil/model"), insecure=False)
    with pytest.raises(RegistryError, match="refusing redirect from https to plain http URL 'http://cdn/x'.*--insecure"):
        client.resolve(httpx.URL(f"https://{fake.host}/v2/"), "http://cdn/x", "blob")
    assert str(client.resolve(httpx.URL(f"https://{fake.host}/v2/"), "https://cdn/x", "blob")) == "https://cdn/x"
    client.close()


def test_redirect_to_another_http_host_is_followed_without_credentials(fake, tmp_path):
    """A CDN redirect works, and the registry's Authorization never travels with it."""
    cdn = FakeRegistry()
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    try:
        fake.routes[f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"] = lambda h: h.reply(307, b"", {"Location": f"http://{cdn.host}/cdn/blobs/{digest_of(WEIGHTS)}"})
        name = serve_manifest(fake, manifest([model_layer()]))
        store = Store(tmp_path / "models", hash_cache=None)
        pull_model(store, name, insecure=True, credentials=("u", "p"), settings=TransferSettings(backoff=0.01))
        assert store.resolve(name).model_path.read_bytes() == WEIGHTS
        assert cdn.requests and all("Authorization" not in headers for _, _, headers in cdn.requests)
    finally:
        cdn.shutdown()
        cdn.server_close()


def test_endless_blob_body_is_cut_off(fake, tmp_path):
    fake.routes[f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"] = endless
    pull_fails(fake, tmp_path, manifest([model_layer()]), r"sent more bytes than")


def test_endless_manifest_is_cut_off(fake, tmp_path):
    fake.routes["/v2/evil/model/manifests/latest"] = lambda h: endless(h, 200)
    store = Store(tmp_path / "models", hash_cache=None)
    with pytest.raises(RegistryError, match="sent more than the 33554432 bytes allowed"):
        pull_model(store, f"{fake.host}/evil/model", insecure=True)
    assert not (tmp_path / "models" / "manifests").exists()


def test_endless_error_body_is_not_read_to_the_end(fake, tmp_path):
    fake.routes["/v2/evil/model/manifests/latest"] = lambda h: endless(h, 400)
    with pytest.raises(RegistryError, match=f"{fake.host} answered 400"):
        pull_model(Store(tmp_path / "models", hash_cache=None), f"{fake.host}/evil/model", insecure=True)


def test_range_ignored_by_the_server_is_an_error(fake, tmp_path, quick):
    fake.routes[f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"] = lambda h: h.reply(200, WEIGHTS)
    pull_fails(fake, tmp_path, manifest([model_layer()]), r"ignored the byte range", settings=quick)


def test_a_stalled_part_is_restarted_from_where_it_stopped(fake, tmp_path, quick):
    """The first answer for a part stops sending halfway; the retry asks only for the rest."""
    blob_path = f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"
    stalled = []

    def stall_once(handler):
        start, _, end = handler.headers["Range"][6:].partition("-")
        if start == "4096" and not stalled:  # the fifth 1 KiB part
            stalled.append(start)
            body = WEIGHTS[4096 : int(end) + 1]
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes 4096-{end}/{len(WEIGHTS)}")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:500])
            handler.wfile.flush()
            time.sleep(3)  # longer than the stall timeout
            return
        send_range(handler, WEIGHTS)

    fake.routes[blob_path] = stall_once
    name = serve_manifest(fake, manifest([model_layer()]))
    store = Store(tmp_path / "models", hash_cache=None)
    pull_model(store, name, insecure=True, settings=quick)
    assert store.resolve(name).model_path.read_bytes() == WEIGHTS
    ranges = [h.get("Range") for m, p, h in fake.requests if p == blob_path]
    assert stalled and "bytes=4596-5119" in ranges  # resumed after the 500 bytes that did arrive


def test_bearer_token_challenge(fake, tmp_path):
    """A 401 with a Bearer challenge: the token is fetched from the realm and sent back."""
    digest_path = f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"
    challenge = f'Bearer realm="http://{fake.host}/token",service="fake",scope="repository:evil/model:pull"'

    def guarded(serve):
        def route(handler):
            if handler.headers.get("Authorization") != "Bearer t0ken":
                return handler.reply(401, b"{}", {"WWW-Authenticate": challenge})
            return serve(handler)

        return route

    data = manifest([model_layer()])
    fake.routes["/v2/evil/model/manifests/latest"] = guarded(lambda h: h.reply(200, data))
    fake.routes[digest_path] = guarded(lambda h: send_range(h, WEIGHTS))
    fake.routes[f"/v2/evil/model/blobs/{digest_of(CONFIG)}"] = guarded(lambda h: send_range(h, CONFIG))
    fake.routes["/token"] = lambda h: h.reply(200, b'{"token": "t0ken"}')
    store = Store(tmp_path / "models", hash_cache=None)
    pull_model(store, f"{fake.host}/evil/model", insecure=True, settings=TransferSettings(backoff=0.01))
    token_request = next(p for m, p, h in fake.requests if p.startswith("/token"))
    assert "service=fake" in token_request and "scope=repository%3Aevil%2Fmodel%3Apull" in token_request


def test_bearer_realm_of_another_scheme_is_refused(fake, tmp_path):
    challenge = 'Bearer realm="file:///etc/passwd",service="x"'
    fake.routes["/v2/evil/model/manifests/latest"] = lambda h: h.reply(401, b"", {"WWW-Authenticate": challenge})
    with pytest.raises(RegistryError, match="token realm: refusing redirect to 'file:.*only http and https"):
        pull_model(Store(tmp_path / "models", hash_cache=None), f"{fake.host}/evil/model", insecure=True)


def test_token_request_signed_with_ollamas_key_for_a_realm_on_the_registry_host(fake, tmp_path, monkeypatch):
    """As Ollama: no credentials, realm on the registry's host -> the token URL is signed."""
    import base64
    import shutil
    import subprocess

    from pollama.store.registry_signing import ed25519_sign, read_openssh_ed25519

    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    (tmp_path / "home" / ".ollama").mkdir(parents=True)
    key = tmp_path / "home" / ".ollama" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    challenge = f'Bearer realm="http://{fake.host}/token",service="ollama.com",scope="repository:evil/model:pull"'
    data = manifest([model_layer()])

    def manifest_route(handler):
        if handler.headers.get("Authorization") != "Bearer signed-token":
            return handler.reply(401, b"{}", {"WWW-Authenticate": challenge})
        return handler.reply(200, data)

    fake.routes["/v2/evil/model/manifests/latest"] = manifest_route
    fake.routes["/token"] = lambda h: h.reply(200, b'{"token": "signed-token"}')
    store = Store(tmp_path / "models", hash_cache=None)
    pull_model(store, f"{fake.host}/evil/model", insecure=True, settings=TransferSettings(backoff=0.01))

    _, path, headers = next(r for r in fake.requests if r[1].startswith("/token"))
    query = path.split("?", 1)[1]
    assert [kv.split("=")[0] for kv in query.split("&")] == ["nonce", "scope", "service", "ts"]  # Go's sorted Encode
    seed, public_blob = read_openssh_ed25519(key)
    empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    signature = ed25519_sign(seed, f"GET,http://{fake.host}{path},{empty}".encode())
    assert headers["Authorization"] == f"{base64.b64encode(public_blob).decode()}:{base64.b64encode(signature).decode()}"


def test_an_expired_direct_url_is_asked_for_again(fake, tmp_path, quick):
    """A CDN that refuses its signed URL (403) makes the pull ask the registry for a new one."""
    cdn = FakeRegistry()
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    try:
        issued = []

        def redirect(handler):
            issued.append(1)
            handler.reply(307, b"", {"Location": f"http://{cdn.host}/signed/{len(issued)}"})

        def signed(handler):
            version = handler.path.rpartition("/")[2]
            if version == "1" and handler.headers.get("Range") != "bytes=0-0":
                return handler.reply(403, b"expired")
            send_range(handler, WEIGHTS)

        fake.routes[f"/v2/evil/model/blobs/{digest_of(WEIGHTS)}"] = redirect
        for n in range(1, 40):
            cdn.routes[f"/signed/{n}"] = signed
        name = serve_manifest(fake, manifest([model_layer()]))
        store = Store(tmp_path / "models", hash_cache=None)
        pull_model(store, name, insecure=True, settings=quick)
        assert store.resolve(name).model_path.read_bytes() == WEIGHTS
        assert len(issued) > 1
    finally:
        cdn.shutdown()
        cdn.server_close()


def test_an_empty_layer_is_pulled(fake, tmp_path):
    empty = {"mediaType": MediaType.SYSTEM, "digest": digest_of(b""), "size": 0}
    fake.blobs[digest_of(b"")] = b""
    name = serve_manifest(fake, manifest([model_layer(), empty]))
    store = Store(tmp_path / "models", hash_cache=None)
    pull_model(store, name, insecure=True, settings=TransferSettings(backoff=0.01))
    assert store.resolve(name).system == ""


def test_part_descriptors_are_ollamas_json():
    from pollama.store.registry_download import Part

    assert Part(3, 300, 100, 42).to_json() == b'{"N":3,"Offset":300,"Size":100,"Completed":42}'
    assert Part.from_json(b'{"N":3,"Offset":300,"Size":100,"Completed":42}\n') == Part(3, 300, 100, 42)
    for bad in (b'{"N":3,"Offset":300,"Size":100,"Completed":101}', b'{"N":-1,"Offset":0,"Size":1,"Completed":0}', b"[]", b"{"):
        assert Part.from_json(bad) is None


def test_a_partial_file_with_wrong_bytes_fails_once_then_downloads_again(fake, tmp_path):
    """Descriptors that claim bytes the file does not hold (a power cut) are caught by the digest."""
    from pollama.store.registry_download import Part

    name = serve_manifest(fake, manifest([model_layer()]))
    store = Store(tmp_path / "models", hash_cache=None)
    partial = store.partial_blob_path(digest_of(WEIGHTS))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * len(WEIGHTS))
    partial.with_name(partial.name + "-0").write_bytes(Part(0, 0, len(WEIGHTS), len(WEIGHTS)).to_json())
    with pytest.raises(DigestMismatch, match="downloaded blob has digest"):
        pull_model(store, name, insecure=True, settings=TransferSettings(backoff=0.01))
    assert not list(partial.parent.glob(partial.name + "*"))
    pull_model(store, name, insecure=True, settings=TransferSettings(backoff=0.01))
    assert store.resolve(name).model_path.read_bytes() == WEIGHTS
