"""create checks a Modelfile's TEMPLATE as Ollama's does: it must parse as a Go template, and a
hostile one (nested 20000 deep, or past the parser's limits) is a clear error, not a RecursionError."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pollama.create.pipeline import CreateError, create_model
from pollama.fs.ggml_types import GGMLType
from pollama.fs.writer import write_gguf
from pollama.store.store import Store


@pytest.fixture()
def gguf(tmp_path):
    path = tmp_path / "m.gguf"
    meta = {"general.architecture": "llama", "llama.block_count": 1, "llama.embedding_length": 4,
            "llama.attention.head_count": 1, "llama.feed_forward_length": 4, "llama.context_length": 8,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1, 1],
            "tokenizer.ggml.merges": []}
    weights = np.zeros((2, 4), np.float32).view(np.uint8).ravel()
    write_gguf(path, meta, [("token_embd.weight", weights, GGMLType.F32, (2, 4))])
    return path


@pytest.mark.parametrize(("template", "error"), [
    ("{{if true}}" * 20000 + "{{ .Prompt }}" + "{{end}}" * 20000, "template too large"),
    ("{{if true}}" * 1000 + "{{ .Prompt }}" + "{{end}}" * 1000, "nested too deeply: more than 50 levels"),
    ("{{ .Prompt", "unclosed action"),
])
def test_a_bad_template_is_refused(tmp_path, gguf, template, error):
    store = Store(tmp_path / "models", hash_cache=None)
    started = time.monotonic()
    with pytest.raises(CreateError, match=f"^template error: template: .*{error}"):
        create_model(store, "bad", f'FROM {gguf}\nTEMPLATE """{template}"""\n')
    assert time.monotonic() - started < 5
    assert not store.exists("bad")


def test_a_good_template_is_kept(tmp_path, gguf):
    store = Store(tmp_path / "models", hash_cache=None)
    create_model(store, "good", f'FROM {gguf}\nTEMPLATE """{{{{ .System }}}} {{{{ .Prompt }}}}"""\n')
    assert store.resolve("good").template == "{{ .System }} {{ .Prompt }}"
