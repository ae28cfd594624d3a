"""Fixtures for the tokenizer tests: GGUF metadata of the conformance vocabularies and real models."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from pollama.fs.gguf import GGUFFile
from pollama.store.embedded import embedded_model_path
from pollama.tokenizer import Tokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO.parent / "shared" / "testdata"
VOCAB_DIR = TESTDATA / "vocab"
REFERENCE = REPO.parent / "shared" / "reference" / "llamacpp-shared.json"

# Suites of llama.cpp's tokenizer tests in shared/testdata/vocab, by kind.
VOCAB_SUITES = {
    "gpt-2": "bpe", "llama-bpe": "bpe", "qwen2": "bpe", "deepseek-coder": "bpe",
    "llama-spm": "spm", "phi-3": "spm", "bert-bge": "wpm",
}
# Real models: embedded-model name -> key in llamacpp-shared.json.
REAL_MODELS = {
    "smollm2": "smollm2-135m-instruct-q4_1",
    "gemma3-270m": "gemma3-270m-q4_k_m",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """GGUF metadata as plain Python values."""
    with GGUFFile(path) as f:
        return dict(f.metadata)


@cache
def vocab_metadata(name: str) -> dict[str, Any]:
    """Metadata of shared/testdata/vocab/ggml-vocab-NAME.gguf (skips when absent)."""
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        pytest.skip(f"tokenizer conformance data not found: {path} (shared/testdata is not laid out here)")
    return read_metadata(path)


@cache
def vocab_tokenizer(name: str) -> Tokenizer:
    """Tokenizer of a conformance vocabulary."""
    return load_tokenizer(vocab_metadata(name))


def vocab_cases(name: str) -> list[tuple[str, list[int]]]:
    """(text, expected ids) of a conformance suite, in file order."""
    inp = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()  # the file ends with the marker
    expected = [[int(t) for t in line.split()] for line in out.split("\n")[: len(texts)]]
    assert len(expected) == len(texts), f"{name}: {len(texts)} inputs but {len(expected)} outputs"
    return list(zip(texts, expected, strict=True))


@cache
def model_path(name: str) -> Path:
    """Path of an installed real model's GGUF, assembled once into the cache (skips when absent)."""
    try:
        return embedded_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@cache
def model_metadata(name: str) -> dict[str, Any]:
    """Metadata of a real model (skips when its package is not installed)."""
    return read_metadata(model_path(name))


@cache
def model_tokenizer(name: str) -> Tokenizer:
    """Tokenizer of a real model (skips when its package is not installed)."""
    return load_tokenizer(model_metadata(name))


@cache
def llamacpp_reference() -> dict[str, Any]:
    """shared/reference/llamacpp-shared.json (skips when absent)."""
    if not REFERENCE.exists():
        pytest.skip(f"llama.cpp reference outputs not found: {REFERENCE}")
    return json.loads(REFERENCE.read_text(encoding="utf-8"))["models"]


# --- fixtures (test modules cannot import this file under --import-mode=importlib) -----------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`suite` runs a test once per conformance vocabulary, `real_model` once per real model."""
    if "suite" in metafunc.fixturenames:
        metafunc.parametrize("suite", list(VOCAB_SUITES))
    if "real_model" in metafunc.fixturenames:
        metafunc.parametrize("real_model", list(REAL_MODELS))


@pytest.fixture
def suite_kind(suite: str) -> str:
    """'bpe', 'spm' or 'wpm' for the parametrized conformance suite."""
    return VOCAB_SUITES[suite]


@pytest.fixture
def suite_tokenizer(suite: str) -> Tokenizer:
    """Tokenizer of the parametrized conformance suite."""
    return vocab_tokenizer(suite)


@pytest.fixture
def suite_cases(suite: str) -> list[tuple[str, list[int]]]:
    """(text, expected ids) of the parametrized conformance suite."""
    vocab_metadata(suite)  # skips when the data is absent
    return vocab_cases(suite)


@pytest.fixture
def real_tokenizer(real_model: str) -> Tokenizer:
    """Tokenizer of the parametrized real model."""
    return model_tokenizer(real_model)


@pytest.fixture
def real_reference(real_model: str) -> dict[str, Any]:
    """llama.cpp's outputs for the parametrized real model."""
    return llamacpp_reference()[REAL_MODELS[real_model]]


@pytest.fixture
def vocab():
    """vocab(name) -> Tokenizer of shared/testdata/vocab/ggml-vocab-NAME.gguf (skips when absent)."""
    return vocab_tokenizer


@pytest.fixture
def model():
    """model(name) -> Tokenizer of an installed real model (skips when absent)."""
    return model_tokenizer


@pytest.fixture
def metadata_of():
    """metadata_of(name) -> GGUF metadata of a conformance vocabulary or, failing that, of a real
    model (skips when absent)."""
    return lambda name: model_metadata(name) if name in REAL_MODELS else vocab_metadata(name)
