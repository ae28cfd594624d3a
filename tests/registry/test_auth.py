"""A registry behind htpasswd Basic auth: credentials work, their absence is a clear 401."""

from __future__ import annotations

import pytest

from pollama.store.registry import RegistryError, pull_model, push_model
from pollama.store.store import Store


@pytest.fixture(scope="module")
def secured_name(auth_registry, smollm2_store):
    name = f"{auth_registry.host}/team/smollm2:latest"
    smollm2_store.copy("smollm2", name)
    return name


def test_without_credentials_push_and_pull_fail_with_401(secured_name, smollm2_store, tmp_path, settings):
    host = secured_name.split("/")[0]
    with pytest.raises(RegistryError, match=rf"401 unauthorized by {host}: the registry needs credentials: set POLLAMA_REGISTRY_USERNAME and POLLAMA_REGISTRY_PASSWORD"):
        push_model(smollm2_store, secured_name, insecure=True, settings=settings)
    with pytest.raises(RegistryError, match="401 unauthorized"):
        pull_model(Store(tmp_path / "m", hash_cache=None), secured_name, insecure=True, settings=settings)
    assert not (tmp_path / "m" / "manifests").exists()


def test_wrong_password_is_refused(secured_name, smollm2_store, settings):
    with pytest.raises(RegistryError, match="401 unauthorized by .*refused the credentials"):
        push_model(smollm2_store, secured_name, insecure=True, credentials=("alice", "wrong"), settings=settings)


def test_with_credentials_push_and_pull_work(secured_name, smollm2_store, tmp_path, settings, monkeypatch):
    pushed = push_model(smollm2_store, secured_name, insecure=True, credentials=("alice", "s3cret"), settings=settings)
    assert pushed.transferred_blobs == len(smollm2_store.read_manifest(secured_name).all_layers())
    # The same from the environment variables the CLI uses.
    monkeypatch.setenv("POLLAMA_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("POLLAMA_REGISTRY_PASSWORD", "s3cret")
    store = Store(tmp_path / "m", hash_cache=None)
    pulled = pull_model(store, secured_name, insecure=True, settings=settings)
    assert pulled.manifest.digest == smollm2_store.read_manifest(secured_name).digest
    assert store.resolve(secured_name).model_path.is_file()
