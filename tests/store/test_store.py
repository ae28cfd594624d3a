"""The store: blobs, manifests, list/copy/remove with GC, case folding, integrity, hostile input."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pollama.store.blobs as blobs_module
import pollama.store.files as files_module
from pollama.store.errors import DigestMismatch, InvalidName, ModelNotFound, StoreError
from pollama.store.manifest import (
    CONFIG_MEDIA_TYPE,
    Layer,
    Manifest,
    MediaType,
    encode_config,
    encode_messages,
    encode_params,
    go_json,
)
from pollama.store.names import parse_name
from pollama.store.store import TEMP_PREFIX, Store, default_root

FAKE_GGUF = b"GGUF" + b"\x03\x00\x00\x00" + bytes(range(256)) * 4
CONFIG = {
    "model_format": "gguf",
    "model_family": "llama",
    "model_families": ["llama"],
    "model_type": "135M",
    "file_type": "Q4_1",
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models", hash_cache=None)


def blob_names(store: Store) -> set[str]:
    return set(os.listdir(store.blobs_dir)) if store.blobs_dir.is_dir() else set()


def make_model(store: Store, name: str, system: str | None = None, template: str = "{{ .Prompt }}") -> Manifest:
    layers = [
        store.add_layer(FAKE_GGUF, MediaType.MODEL),
        store.add_layer(template.encode(), MediaType.TEMPLATE),
        store.add_layer(encode_params({"stop": ["<|im_end|>"], "temperature": 0.7}), MediaType.PARAMS),
    ]
    if system is not None:
        layers.append(store.add_layer(system.encode(), MediaType.SYSTEM))
    return store.write_manifest(name, CONFIG, layers)


# -- root --------------------------------------------------------------------------------------
def test_root_from_env_trimmed_like_ollama(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_MODELS", f' "{tmp_path}/m" ')
    assert default_root() == tmp_path / "m"
    assert Store(hash_cache=None).root == tmp_path / "m"
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".ollama" / "models"


def test_empty_or_missing_store(store):
    assert store.list() == []
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        store.read_manifest("nope")
    with pytest.raises(ModelNotFound):
        store.resolve("nope")
    with pytest.raises(ModelNotFound):
        store.remove("nope")
    assert not store.exists("nope")


# -- blobs -------------------------------------------------------------------------------------
def test_write_blob_from_bytes_path_and_stream(store, tmp_path):
    data = b"hello blob" * 1000
    digest = store.write_blob(data)
    assert digest == digest_of(data)
    path = store.blob_path(digest)
    assert path.name == "sha256-" + digest[7:]  # a dash on disk, a colon in JSON
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    src = tmp_path / "src.bin"
    src.write_bytes(data + b"!")
    assert store.write_blob(src) == digest_of(data + b"!")
    assert store.write_blob(io.BytesIO(b"stream"), expected_digest=digest_of(b"stream")) == digest_of(b"stream")
    assert store.has_blob(digest)
    assert blob_names(store) == {f"sha256-{digest_of(d)[7:]}" for d in (data, data + b"!", b"stream")}


def test_write_blob_refuses_a_wrong_expected_digest(store):
    with pytest.raises(DigestMismatch, match="expected sha256:" + "0" * 64):
        store.write_blob(b"data", expected_digest="sha256:" + "0" * 64)
    assert blob_names(store) == set()  # nothing, not even a temp file


def test_write_blob_skips_reading_when_the_blob_is_present(store):
    digest = store.write_blob(b"present")

    class Unreadable(io.RawIOBase):
        def read(self, n=-1):
            raise AssertionError("source was read")

    assert store.write_blob(Unreadable(), expected_digest=digest) == digest


def test_write_blob_heals_a_damaged_blob(store):
    digest = store.write_blob(b"good bytes")
    store.blob_path(digest).write_bytes(b"evil bytes")
    assert store.write_blob(b"good bytes") == digest
    assert store.blob_path(digest).read_bytes() == b"good bytes"


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../etc/passwd",
        "sha256:" + "0" * 63,
        "sha256:" + "A" * 64,  # upper case: Ollama only writes lower case
        "sha256-" + "0" * 64,
        "sha512:" + "0" * 64,
        "../" + "0" * 64,
        "sha256:" + "0" * 64 + "\n",
        "sha256:" + "0" * 64 + "/..",
        "",
        None,
    ],
)
def test_bad_digests_never_reach_a_path(store, digest):
    with pytest.raises(StoreError, match="invalid"):
        store.blob_path(digest)
    with pytest.raises(StoreError):
        store.has_blob(digest)
    if digest is not None:  # None means "no expectation"
        with pytest.raises(StoreError):
            store.write_blob(b"x", expected_digest=digest)


def test_write_blob_rejects_non_binary_sources(store):
    with pytest.raises(TypeError):
        store.write_blob(12345)
    with pytest.raises(TypeError):
        store.write_blob(io.StringIO("text"))
    assert not any(n.startswith("sha256-") for n in blob_names(store))


# -- round trip --------------------------------------------------------------------------------
def test_create_list_copy_show_remove_with_blob_gc(store):
    m1 = make_model(store, "alpha")
    m2 = make_model(store, "beta:7b", system="You are terse.")
    shared = {layer.digest for layer in m1.all_layers()} & {layer.digest for layer in m2.all_layers()}
    assert len(shared) == 4  # model, template, params and the config are the same bytes

    infos = {info.name.display: info for info in store.list()}
    assert set(infos) == {"alpha:latest", "beta:7b"}
    assert infos["alpha:latest"].digest == m1.digest == hashlib.sha256(m1.path.read_bytes()).hexdigest()
    assert infos["alpha:latest"].size == m1.size == sum(layer.size for layer in m1.layers) + m1.config.size
    assert infos["beta:7b"].modified_at.tzinfo is not None

    assert store.copy("alpha", "gamma:v1").display == "gamma:v1"
    assert store.read_manifest("gamma:v1").digest == m1.digest  # the bytes are copied verbatim

    shown = store.resolve("beta:7b")
    assert shown.system == "You are terse."
    assert shown.template == "{{ .Prompt }}"
    assert shown.params == {"stop": ["<|im_end|>"], "temperature": 0.7}
    assert shown.model_path == store.blob_path(m1.layers[0].digest)
    assert store.read_config("beta:7b")["file_type"] == "Q4_1"

    store.remove("alpha")
    assert not store.exists("alpha")
    assert all(store.has_blob(layer.digest) for layer in m1.all_layers())  # gamma still uses them
    store.remove("beta:7b")
    system_digest = m2.layers_of(MediaType.SYSTEM)[0].digest
    assert not store.has_blob(system_digest)  # only beta used it
    assert all(store.has_blob(layer.digest) for layer in m1.all_layers())
    store.remove("gamma:v1")
    assert blob_names(store) == set()
    assert os.listdir(store.manifests_dir) == []  # empty directories pruned
    assert store.list() == []


def test_write_manifest_bytes_match_ollama(store):
    m = make_model(store, "alpha")
    raw = m.path.read_bytes()
    assert raw.endswith(b"}\n") and b" " not in raw
    obj = json.loads(raw)
    assert list(obj) == ["schemaVersion", "mediaType", "config", "layers"]
    assert obj["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert obj["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert list(obj["layers"][0]) == ["mediaType", "digest", "size"]
    config_bytes = store.blob_path(m.config.digest).read_bytes()
    assert config_bytes == (
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"135M",'
        b'"file_type":"Q4_1","architecture":"amd64","os":"linux"}\n'
    )


def test_overwriting_a_model_keeps_one_manifest(store):
    make_model(store, "alpha", system="one")
    make_model(store, "alpha", system="two")
    assert [i.name.display for i in store.list()] == ["alpha:latest"]
    assert store.resolve("alpha").system == "two"


def test_write_manifest_needs_blobs_present_with_their_size(store):
    missing = Layer(MediaType.MODEL, digest_of(b"never written"), 13)
    with pytest.raises(StoreError, match="not in the store"):
        store.write_manifest("x", CONFIG, [missing])
    digest = store.write_blob(b"four")
    with pytest.raises(StoreError, match="says 5 bytes"):
        store.write_manifest("x", CONFIG, [Layer(MediaType.MODEL, digest, 5)])
    with pytest.raises(StoreError, match="unknown layer media type"):
        store.write_manifest("x", CONFIG, [Layer("application/vnd.ollama.image.evil", digest, 4)])
    with pytest.raises(StoreError, match="unknown config field"):
        store.write_manifest("x", {"rootfs": {}}, [])
    with pytest.raises(InvalidName):
        store.write_manifest("../x", CONFIG, [])
    assert not store.exists("x")


def test_copy_onto_itself_and_from_missing(store):
    make_model(store, "alpha")
    assert store.copy("alpha", "ALPHA:latest") == parse_name("alpha")
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        store.copy("nope", "beta")
    with pytest.raises(InvalidName):
        store.copy("alpha", "../beta")


# -- case folding ------------------------------------------------------------------------------
def test_names_are_found_case_insensitively(store):
    make_model(store, "MyOrg/MyModel:V1")
    for spelling in ("myorg/mymodel:v1", "MYORG/MYMODEL:V1", "registry.ollama.ai/myorg/MyModel:v1"):
        assert store.exists(spelling)
        assert store.canonical_name(spelling).display == "MyOrg/MyModel:V1"
        assert store.resolve(spelling).name.display == "MyOrg/MyModel:V1"
    # Writing under another spelling overwrites the model rather than adding a twin,
    # and copying to another spelling of a new tag lands in the existing directories.
    make_model(store, "myorg/mymodel:v1", system="again")
    store.copy("myorg/mymodel:v1", "MYORG/MYMODEL:v2")
    assert sorted(i.name.display for i in store.list()) == ["MyOrg/MyModel:V1", "MyOrg/MyModel:v2"]
    store.remove("myorg/MYMODEL:V1")
    store.remove("MyOrg/MyModel:V2")
    assert store.list() == []


# -- integrity ---------------------------------------------------------------------------------
def test_damaged_blob_is_refused_naming_blob_and_model(store):
    m = make_model(store, "alpha")
    path = store.blob_path(m.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match=rf"blob {m.layers[0].digest} of model 'alpha:latest' does not match"):
        store.resolve("alpha")
    path.write_bytes(b"GGUF short")
    with pytest.raises(DigestMismatch, match="bytes but its manifest says"):
        store.resolve("alpha")
    path.unlink()
    with pytest.raises(StoreError, match="is missing"):
        store.resolve("alpha")


def test_damaged_small_layer_is_refused(store):
    m = make_model(store, "alpha")
    store.blob_path(m.layers[1].digest).write_bytes(b"{{ .Evil }}  ")
    with pytest.raises(DigestMismatch, match="template blob"):
        store.resolve("alpha")


def test_verified_blobs_are_not_rehashed_until_they_change(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module.BlobVerifier, "PERSIST_BYTES", 0)  # our test blobs are small
    cache = tmp_path / "verified.json"
    store = Store(tmp_path / "models", hash_cache=cache)
    m = make_model(store, "alpha")
    calls = []
    real = blobs_module.sha256_file
    monkeypatch.setattr(blobs_module, "sha256_file", lambda p: calls.append(p) or real(p))
    store.resolve("alpha")
    assert calls == []  # written by this store: already known
    Store(tmp_path / "models", hash_cache=cache).resolve("alpha")
    assert calls == []  # known across instances (processes) through the cache file
    path = store.blob_path(m.layers[0].digest)
    os.utime(path, ns=(1, 1))  # any change of identity means hashing again
    store.resolve("alpha")
    assert calls == [path]
    store.resolve("alpha")
    assert calls == [path]
    assert str(path) in json.loads(cache.read_text())
    store.remove("alpha")
    assert json.loads(cache.read_text()) == {}  # deleted blobs are forgotten


# -- crashes -----------------------------------------------------------------------------------
def test_exception_mid_stream_leaves_nothing(store):
    class Failing(io.RawIOBase):
        sent = 0

        def readable(self):
            return True

        def read(self, n=-1):
            self.sent += 1
            if self.sent > 3:
                raise OSError("network went away")
            return b"x" * (1 << 20)

    with pytest.raises(OSError, match="network went away"):
        store.write_blob(Failing())
    assert blob_names(store) == set()


def test_exception_while_writing_a_manifest_leaves_nothing(store, monkeypatch):
    make_model(store, "alpha")
    before = store.read_manifest("alpha").path.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if "manifests" in str(dst):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(files_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        make_model(store, "beta")
    with pytest.raises(OSError, match="disk full"):
        make_model(store, "alpha", system="changed")
    monkeypatch.undo()
    assert [i.name.display for i in store.list()] == ["alpha:latest"]
    assert store.read_manifest("alpha").path.read_bytes() == before  # old version intact
    leftovers = [f for _, _, files in os.walk(store.root) for f in files if f.startswith(TEMP_PREFIX)]
    assert leftovers == []


# -- hostile manifests -------------------------------------------------------------------------
def put_manifest(store: Store, name: str, data: bytes | str) -> Path:
    path = store.manifests_dir.joinpath(*parse_name(name).parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def manifest_json(layers: list[dict], config: dict | None = None) -> str:
    config = config or {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 2}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config,
            "layers": layers,
        }
    )


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        ("", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"schemaVersion": 1}', "schemaVersion 1"),
        ('{"schemaVersion": true}', "schemaVersion True"),
        ('{"schemaVersion": 2, "mediaType": "text/html", "config": {}, "layers": []}', "mediaType 'text/html'"),
        ('{"schemaVersion": 2, "layers": []}', "has no config"),
        ('{"schemaVersion": 2, "config": {}, "layers": {}}', "no list of layers"),
        (
            manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:../../../etc/passwd", "size": 1}]),
            "invalid layer digest",
        ),
        (
            manifest_json([{"mediaType": MediaType.MODEL, "digest": "../" + "0" * 64, "size": 1}]),
            "invalid layer digest",
        ),
        (manifest_json([{"mediaType": MediaType.MODEL, "size": 1}]), "no 'digest'"),
        (
            manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:" + "1" * 64, "size": 10**30}]),
            "invalid size",
        ),
        (manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:" + "1" * 64, "size": -1}]), "invalid size"),
        (manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:" + "1" * 64, "size": 1.5}]), "invalid size"),
        (manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:" + "1" * 64, "size": True}]), "invalid size"),
        (manifest_json([{"mediaType": "../../x", "digest": "sha256:" + "1" * 64, "size": 1}]), "invalid media type"),
        (
            manifest_json([{"mediaType": MediaType.MODEL, "digest": "sha256:" + "1" * 64, "size": 1, "from": 7}]),
            "'from' must be a string",
        ),
        (manifest_json(["layer"]), "layer 0: a layer must be a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply|not a JSON object"),
        ('{"schemaVersion": 2, "size": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_hostile_manifests_give_clear_errors(store, data, message):
    put_manifest(store, "evil", data)
    with pytest.raises(StoreError, match=message) as info:
        store.read_manifest("evil")
    assert "model 'evil:latest'" in str(info.value)
    with pytest.raises(StoreError, match=message):
        store.resolve("evil")
    assert store.list() == []  # skipped, as Ollama skips a corrupt manifest


def test_unknown_and_unsupported_media_types_fail_resolve(store):
    make_model(store, "alpha")
    good = json.loads(store.read_manifest("alpha").path.read_bytes())
    blob = store.write_blob(b"something")
    for media_type, message in [
        ("application/vnd.ollama.image.future", "unknown media type 'application/vnd.ollama.image.future'"),
        (MediaType.TENSOR, "safetensors"),
    ]:
        good["layers"].append({"mediaType": media_type, "digest": blob, "size": 9})
        put_manifest(store, "odd", json.dumps(good))
        assert sorted(i.name.display for i in store.list()) == ["alpha:latest", "odd:latest"]
        with pytest.raises(StoreError, match=message):
            store.resolve("odd")
        good["layers"].pop()


def test_huge_declared_size_is_refused_before_reading(store):
    make_model(store, "alpha")
    manifest = json.loads(store.read_manifest("alpha").path.read_bytes())
    manifest["layers"][0]["size"] = 2**62
    put_manifest(store, "huge", json.dumps(manifest))
    assert store.read_manifest("huge").size > 2**62  # listing is fine
    with pytest.raises(DigestMismatch, match="bytes but its manifest says 4611686018427387904"):
        store.resolve("huge")
    manifest = json.loads(store.read_manifest("alpha").path.read_bytes())
    manifest["layers"][1]["size"] = 2**40  # a "template" of a terabyte
    put_manifest(store, "huge", json.dumps(manifest))
    with pytest.raises(StoreError, match="too large to read"):
        store.resolve("huge")


def test_bad_params_and_messages_layers(store):
    layers = [store.add_layer(FAKE_GGUF, MediaType.MODEL), store.add_layer(b"[1, 2]", MediaType.PARAMS)]
    store.write_manifest("p", CONFIG, layers)
    with pytest.raises(StoreError, match="params layer of model 'p:latest' must be a JSON object"):
        store.resolve("p")
    layers[1] = store.add_layer(b'[{"content": "hi"}]', MediaType.MESSAGES)
    store.write_manifest("p", CONFIG, layers)
    with pytest.raises(StoreError, match="message 0 must be an object with a string 'role'"):
        store.resolve("p")


def test_model_layer_must_be_gguf(store):
    store.write_manifest("notgguf", CONFIG, [store.add_layer(b"PK\x03\x04 zip", MediaType.MODEL)])
    with pytest.raises(StoreError, match="not a GGUF file"):
        store.resolve("notgguf")
    store.write_manifest("empty", CONFIG, [])
    with pytest.raises(StoreError, match="has no model layer"):
        store.resolve("empty")


def test_corrupt_manifest_blocks_blob_gc_but_not_removal(store):
    m = make_model(store, "alpha")
    put_manifest(store, "broken", "{")
    store.remove("alpha")
    assert not store.exists("alpha")
    assert all(store.has_blob(layer.digest) for layer in m.all_layers())  # broken might use them
    store.remove("broken")
    assert not store.exists("broken")


def test_ignores_stray_files_in_the_manifest_tree(store):
    make_model(store, "alpha")
    (store.manifests_dir / "README").write_text("not a model")
    put_manifest(store, "ns/model:tag", manifest_json([]))
    (store.manifests_dir / "registry.ollama.ai" / "library" / "alpha" / ".DS_Store").write_text("x")
    deep = store.manifests_dir / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "e").write_text("too deep")
    assert sorted(i.name.display for i in store.list()) == ["alpha:latest", "ns/model:tag"]


# -- Go JSON -----------------------------------------------------------------------------------
def test_params_and_messages_bytes_are_gos():
    assert encode_params({"temperature": 0.7, "stop": ["<|im_start|>", "<|im_end|>"], "num_ctx": 4096}) == (
        b'{"num_ctx":4096,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],"temperature":0.7}\n'
    )
    assert encode_messages([{"role": "user", "content": "a & b"}]) == b'[{"role":"user","content":"a \\u0026 b"}]\n'
    with pytest.raises(StoreError):
        encode_messages([{"content": "no role"}])


@pytest.mark.parametrize(
    "value, text",
    [
        (1.0, "1"),
        (-0.0, "-0"),
        (0.7, "0.7"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (1.5e-10, "1.5e-10"),
        (1e16, "10000000000000000"),
        (1.2345678901234568e20, "123456789012345680000"),
        (1e21, "1e+21"),
        (True, "true"),
        (None, "null"),
        ("é\u2028\n\x1b", '"é\\u2028\\n\\u001b"'),
    ],
)
def test_go_json_scalars(value, text):
    assert go_json(value) == (text + "\n").encode()


def test_go_json_refuses_what_go_refuses():
    with pytest.raises(StoreError):
        go_json(float("nan"))
    with pytest.raises(StoreError):
        go_json({1: "int key"})


def test_config_omits_empty_optional_fields():
    assert encode_config({}) == (
        b'{"model_format":"","model_family":"","model_families":null,"model_type":"","file_type":"",'
        b'"architecture":"amd64","os":"linux"}\n'
    )
    out = json.loads(
        encode_config({**CONFIG, "renderer": "qwen3-coder", "context_length": 8192, "capabilities": ["tools"]})
    )
    assert list(out) == [
        "model_format", "model_family", "model_families", "model_type", "file_type",
        "renderer", "capabilities", "context_length", "architecture", "os",
    ]  # fmt: skip


# -- odds and ends -----------------------------------------------------------------------------
def test_legacy_colon_blob_names_are_renamed_on_open(tmp_path):
    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    digest = digest_of(b"old")
    (root / "blobs" / digest).write_bytes(b"old")  # "sha256:<hex>", as very old Ollama wrote
    store = Store(root, hash_cache=None)
    assert os.listdir(root / "blobs") == ["sha256-" + digest[7:]]
    assert store.has_blob(digest)


def test_write_manifest_bytes_stores_pulled_bytes_verbatim(store):
    digest = store.write_blob(FAKE_GGUF)
    config = store.write_blob(b"{}")
    data = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"{config}","size":2}},'
        f'"layers":[{{"mediaType":"{MediaType.MODEL}","digest":"{digest}","size":{len(FAKE_GGUF)}}}]}}'
    ).encode()  # a registry's bytes: no trailing newline
    m = store.write_manifest_bytes("hf.co/someone/thing:Q4", data)
    assert m.path.read_bytes() == data and m.digest == hashlib.sha256(data).hexdigest()
    assert store.resolve("hf.co/someone/thing:q4").model_path == store.blob_path(digest)
    with pytest.raises(StoreError, match="not in the store"):
        store.write_manifest_bytes("other", data.replace(digest[7:].encode(), b"f" * 64))
    with pytest.raises(StoreError, match="not valid JSON"):
        store.write_manifest_bytes("other", b"<html>")
    assert not store.exists("other")


def test_list_is_newest_first(store):
    for i, name in enumerate(["old", "new", "mid"]):
        m = make_model(store, name, system=name)
        os.utime(m.path, (1_000_000 + [0, 200, 100][i],) * 2)
    assert [i.name.display for i in store.list()] == ["new:latest", "mid:latest", "old:latest"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"aZ0_-.:/\\@~ %\x00é", "..", "://"]), max_size=16).map("".join))
def test_no_name_leaves_the_store(text):
    store = Store("/nonexistent/models", hash_cache=None)
    try:
        name = parse_name(text)
    except InvalidName:
        return
    _, path = store._manifest_target(name)
    assert os.path.dirname(os.path.abspath(path)).startswith("/nonexistent/models/manifests/")
    assert ".." not in path.parts and len(path.relative_to(store.manifests_dir).parts) == 4


def test_giant_manifest_is_refused_without_reading_it_all(store, tmp_path):
    path = put_manifest(store, "giant", "")
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # a sparse terabyte
    with pytest.raises(StoreError, match="larger than a manifest can be"):
        store.read_manifest("giant")
