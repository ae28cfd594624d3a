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
