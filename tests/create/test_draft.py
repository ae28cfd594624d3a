"""DRAFT in a Modelfile: a speculative-decoding draft model stored with the model (Ollama's
draft layer), refused at create unless its tokenizer is the model's."""

from __future__ import annotations

from pathlib import Path

import pytest
from cliproc import assert_one_line_error, pollama
from tinyllama import VOCAB, tiny_llama

from pollama.create.pipeline import CreateError, create_model
from pollama.store.manifest import MediaType
from pollama.store.store import Store


@pytest.fixture()
def models(tmp_path):
    return tiny_llama(tmp_path / "target.gguf", seed=0), tiny_llama(tmp_path / "draft.gguf", seed=7, n_layers=1)


def test_draft_file_becomes_the_draft_layer(tmp_path, models):
    target, draft = models
    store = Store(tmp_path / "store")
    lines = []
    create_model(store, "spec", f"FROM {target}\nDRAFT {draft}\nPARAMETER temperature 0\n", status=lines.append)
    resolved = store.resolve("spec")
    assert resolved.draft_path.read_bytes() == draft.read_bytes()
    assert resolved.model_path.read_bytes() == target.read_bytes()
    assert [layer.media_type for layer in resolved.manifest.layers].count(MediaType.DRAFT) == 1
    assert lines[-1] == "success"

    # A model made FROM it keeps its draft; a DRAFT of its own replaces it (one draft layer).
    create_model(store, "child", "FROM spec\nPARAMETER top_k 1\n")
    assert store.resolve("child").draft_path == resolved.draft_path
    create_model(store, "other", f"FROM spec\nDRAFT {target}\n")
    other = store.resolve("other")
    assert other.draft_path == other.model_path  # the same bytes: one blob
    assert [layer.media_type for layer in other.manifest.layers].count(MediaType.DRAFT) == 1


def test_draft_named_by_model(tmp_path, models):
    target, draft = models
    store = Store(tmp_path / "store")
    create_model(store, "small", f"FROM {draft}\n")
    create_model(store, "spec", f"FROM {target}\nDRAFT small\n")
    assert store.resolve("spec").draft_path == store.resolve("small").model_path
    with pytest.raises(CreateError, match="DRAFT ghost: model 'ghost' not found"):
        create_model(store, "bad", f"FROM {target}\nDRAFT ghost\n")
    with pytest.raises(CreateError, match="no such file"):
        create_model(store, "bad", f"FROM {target}\nDRAFT ./nowhere.gguf\n")
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("not a model")
    with pytest.raises(CreateError, match="not a GGUF file"):
        create_model(store, "bad", f"FROM {target}\nDRAFT {not_gguf}\n")
    assert {m.name.display for m in store.list()} == {"small:latest", "spec:latest"}


@pytest.mark.parametrize("change, needle", [
    (dict(vocab=VOCAB[:-1]), "258 tokens, not 259"),
    (dict(vocab=VOCAB[:100] + ["xx"] + VOCAB[101:]), "token 100 is 'xx', not 'a'"),
    (dict(eos=1), "tokenizer.ggml.eos_token_id is 1, not 2"),
])
def test_draft_with_another_tokenizer_is_refused(tmp_path, change, needle):
    target = tiny_llama(tmp_path / "target.gguf")
    draft = tiny_llama(tmp_path / "draft.gguf", seed=3, **change)
    store = Store(tmp_path / "store")
    with pytest.raises(CreateError, match="the draft model's tokenizer is not the model's") as error:
        create_model(store, "spec", f"FROM {target}\nDRAFT {draft}\n")
    assert needle in str(error.value)
    assert not store.list()


def test_create_command_with_draft(tmp_path, models):
    target, draft = models
    env = {"OLLAMA_MODELS": str(tmp_path / "store"), "POLLAMA_CACHE": str(tmp_path / "cache"), "OLLAMA_HOST": "127.0.0.1:9"}
    (tmp_path / "Modelfile").write_text(f"FROM {target.name}\nDRAFT {draft.name}\n")  # relative to the Modelfile
    result = pollama("create", "spec", "-f", str(tmp_path / "Modelfile"), env=env)
    assert result.returncode == 0, result.stderr
    assert Store(tmp_path / "store").resolve("spec").draft_path.read_bytes() == draft.read_bytes()
    # `run` in its own process loads the draft too (drafts verified whatever they cost here).
    ran = pollama("run", "spec", "1, 2, 3,", "--verbose", "--temperature", "0", "--num-predict", "20",
                  env={**env, "POLLAMA_DRAFT_IGNORE_COST": "1"})
    assert ran.returncode == 0, ran.stderr
    assert any(line.startswith("draft accept rate:") for line in ran.stderr.splitlines()), ran.stderr
    bad = tiny_llama(tmp_path / "bad.gguf", eos=1)
    (tmp_path / "Modelfile").write_text(f"FROM {target.name}\nDRAFT {bad.name}\n")
    assert_one_line_error(pollama("create", "bad", "-f", str(tmp_path / "Modelfile"), env=env),
                          "DRAFT bad.gguf: the draft model's tokenizer is not the model's")
