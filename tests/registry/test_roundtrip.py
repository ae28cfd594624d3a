"""Push SmolLM2 to a real registry, pull it into an empty store, run both: same output."""

from __future__ import annotations

import pytest

from pollama.store.registry import RegistryNotFound, pull_model, push_model
from pollama.store.store import Store


def _greedy(path, prompt: str = "The capital of France is") -> str:
    from pollama.runner.parallel import ParallelEngine
    from pollama.runner.generation import Done, GenerateOptions
    from pollama.sample import SamplerOptions

    with ParallelEngine(path, num_ctx=128, num_batch=32) as engine:
        events = list(
            engine.submit(
                engine.tokenizer.encode(prompt),
                GenerateOptions(num_predict=12, sampler=SamplerOptions(temperature=0.0, repeat_penalty=1.0)),
            )
        )
    assert isinstance(events[-1], Done)
    return "".join(e.text for e in events[:-1])


@pytest.fixture(scope="module")
def pushed(registry, smollm2_store):
    from pollama.store.registry import TransferSettings

    settings = TransferSettings(min_part_size=1 << 20, max_part_size=8 << 20, backoff=0.05)
    """SmolLM2 pushed once as <registry>/test/smollm2:latest, with its progress."""
    name = f"{registry.host}/test/smollm2:latest"
    smollm2_store.copy("smollm2", name)
    updates: list[dict] = []
    result = push_model(smollm2_store, name, insecure=True, progress=updates.append, settings=settings)
    return name, result, updates


def test_push_uploads_every_blob_with_ollamas_progress(pushed, smollm2_store):
    name, result, updates = pushed
    manifest = smollm2_store.read_manifest(name)
    assert result.transferred_blobs == len(manifest.all_layers()) and result.skipped_blobs == 0
    assert result.transferred_bytes == manifest.size
    statuses = [u["status"] for u in updates]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    for layer in manifest.all_layers():
        mine = [u for u in updates if u.get("digest") == layer.digest]
        assert mine and all(u["status"] == f"pushing {layer.digest[7:19]}" and u["total"] == layer.size for u in mine)
        assert mine[-1]["completed"] == layer.size


def test_second_push_uploads_nothing(pushed, smollm2_store, settings):
    name, _, _ = pushed
    result = push_model(smollm2_store, name, insecure=True, settings=settings)
    assert result.transferred_blobs == 0 and result.transferred_bytes == 0
    assert result.skipped_blobs == len(smollm2_store.read_manifest(name).all_layers())


def test_pull_into_empty_store_runs_identically(pushed, smollm2_store, tmp_path, settings):
    name, _, _ = pushed
    store = Store(tmp_path / "models", hash_cache=None)
    updates: list[dict] = []
    result = pull_model(store, name, insecure=True, progress=updates.append, settings=settings)
    source = smollm2_store.read_manifest(name)
    assert result.manifest.digest == source.digest  # manifest bytes kept verbatim
    assert result.transferred_bytes == source.size
    statuses = [u["status"] for u in updates]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    model = source.layers_of("application/vnd.ollama.image.model")[0]
    assert {"status": f"pulling {model.digest[7:19]}", "digest": model.digest, "total": model.size, "completed": model.size} in updates
    # Nothing but blobs and the manifest: no partial files or descriptors left.
    assert sorted(p.name for p in (tmp_path / "models" / "blobs").iterdir()) == sorted(
        "sha256-" + layer.digest[7:] for layer in source.all_layers()
    )
    pulled, original = store.resolve(name), smollm2_store.resolve(name)
    assert pulled.params == original.params and pulled.template == original.template
    assert _greedy(pulled.model_path) == _greedy(original.model_path)

    # Pulling again downloads nothing.
    again = pull_model(store, name, insecure=True, settings=settings)
    assert again.transferred_blobs == 0 and again.skipped_blobs == len(source.all_layers())


def test_pull_of_a_missing_model_says_not_found(registry, tmp_path, settings):
    with pytest.raises(RegistryNotFound, match=r"'127\.0\.0\.1:\d+/test/nothing:latest' not found"):
        pull_model(Store(tmp_path / "m", hash_cache=None), f"{registry.host}/test/nothing", insecure=True, settings=settings)
    assert not (tmp_path / "m" / "manifests").exists()


def test_plain_http_needs_insecure(registry, tmp_path, settings):
    with pytest.raises(ValueError, match="insecure protocol http.*--insecure"):
        pull_model(Store(tmp_path / "m", hash_cache=None), f"http://{registry.host}/test/smollm2", settings=settings)


def test_cross_repository_mount(pushed, smollm2_store, settings):
    """A layer whose 'from' is another repository of the same registry is mounted, not sent."""
    from pollama.store.manifest import Layer

    name, _, _ = pushed
    manifest = smollm2_store.read_manifest(name)
    config = smollm2_store.read_config(name)
    layers = [
        Layer(layer.media_type, layer.digest, layer.size, from_=name if layer.media_type.endswith(".model") else "")
        for layer in manifest.layers
    ]
    child = f"{name.split('/')[0]}/other/child:latest"
    smollm2_store.write_manifest(child, config, layers)
    result = push_model(smollm2_store, child, insecure=True, settings=settings)
    assert result.mounted_blobs == 1 and result.transferred_bytes < 1000


def test_stream_transfer_for_the_api(pushed, tmp_path, settings):
    """What /api/pull streams: progress dicts, then success; or one error object."""
    from pollama.store.registry import stream_transfer

    name, _, _ = pushed
    store = Store(tmp_path / "models", hash_cache=None)
    updates = list(stream_transfer(pull_model, store, name, insecure=True, settings=settings))
    assert updates[0] == {"status": "pulling manifest"} and updates[-1] == {"status": "success"}
    assert store.exists(name)

    missing = list(stream_transfer(pull_model, store, name.replace("smollm2", "absent"), insecure=True, settings=settings))
    assert missing[-1].keys() == {"error"} and "not found" in missing[-1]["error"]


def test_closing_the_stream_cancels_the_pull(pushed, tmp_path, settings):
    from pollama.store.registry import stream_transfer

    name, _, _ = pushed
    store = Store(tmp_path / "models", hash_cache=None)
    stream = stream_transfer(pull_model, store, name, insecure=True, settings=settings)
    assert next(stream) == {"status": "pulling manifest"}
    stream.close()  # the client went away
    assert not store.exists(name)


def test_transfer_events_for_an_asyncio_server(pushed, tmp_path, settings):
    import asyncio

    from pollama.store.registry import transfer_events

    name, _, _ = pushed
    store = Store(tmp_path / "models", hash_cache=None)

    async def collect(model):
        return [update async for update in transfer_events(pull_model, store, model, insecure=True, settings=settings)]

    updates = asyncio.run(collect(name))
    assert updates[0] == {"status": "pulling manifest"} and updates[-1] == {"status": "success"}
    with pytest.raises(RegistryNotFound, match="not found"):
        asyncio.run(collect(name.replace("smollm2", "absent")))

    async def first_then_close():
        events = transfer_events(pull_model, Store(tmp_path / "other", hash_cache=None), name, insecure=True, settings=settings)
        first = await anext(events)
        await events.aclose()
        return first

    assert asyncio.run(first_then_close()) == {"status": "pulling manifest"}
    assert not Store(tmp_path / "other", hash_cache=None).exists(name)
