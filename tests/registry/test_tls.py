"""A registry over https (a self-signed certificate made for the test): push and pull without
--insecure once the certificate is trusted (SSL_CERT_FILE); an untrusted one is one clear error."""

from __future__ import annotations

import pytest

from pollama.store.registry import (
    RegistryError,
    TransferSettings,
    pull_model,
    push_model,
)
from pollama.store.store import Store

QUICK = TransferSettings(backoff=0.01, retries=2, connect_timeout=5)


def test_https_push_and_pull(tls_registry, smollm2_store, tmp_path, monkeypatch):
    name = f"{tls_registry.host}/secure/smollm2:latest"
    smollm2_store.copy("smollm2", name)
    with pytest.raises(RegistryError, match="TLS with 127.0.0.1 failed: .*CERTIFICATE_VERIFY_FAILED"):
        push_model(smollm2_store, name, settings=QUICK)

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.ca))
    pushed = push_model(smollm2_store, name, settings=QUICK)
    assert pushed.transferred_blobs == len(smollm2_store.read_manifest(name).all_layers())
    store = Store(tmp_path / "models", hash_cache=None)
    pulled = pull_model(store, name, settings=QUICK)
    assert pulled.manifest.digest == smollm2_store.read_manifest(name).digest


def test_insecure_speaks_plain_http_which_a_tls_registry_refuses(tls_registry, tmp_path):
    with pytest.raises(RegistryError, match=f"{tls_registry.host} answered 400: Client sent an HTTP request to an HTTPS server"):
        pull_model(Store(tmp_path / "models", hash_cache=None), f"{tls_registry.host}/secure/smollm2", insecure=True, settings=QUICK)


def test_https_registry_redirecting_a_blob_to_plain_http_is_refused(tls_registry, tmp_path, monkeypatch):
    """A registry on https may not send a pull to http (downgrade), as Ollama's --insecure only allows."""
    import hashlib
    import json
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    config = b'{"model_format":"gguf"}'
    weights = b"GGUF" + b"\0" * 100
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(weights)}],
    }).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.endswith("/manifests/latest"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(manifest)))
                self.end_headers()
                self.wfile.write(manifest)
            else:
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.1:9/blob")
                self.send_header("Content-Length", "0")
                self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_registry.ca, tls_registry.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.ca))
    try:
        store = Store(tmp_path / "models", hash_cache=None)
        with pytest.raises(RegistryError, match="refusing redirect from https to plain http URL 'http://127.0.0.1:9/blob'"):
            pull_model(store, f"127.0.0.1:{server.server_address[1]}/evil/model", settings=QUICK)
        assert not (tmp_path / "models" / "manifests").exists()
    finally:
        server.shutdown()
        server.server_close()
