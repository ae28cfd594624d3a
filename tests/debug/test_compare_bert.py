"""`compare` on the encoder: a tiny random BertModel and the real all-MiniLM-L6-v2, layer by layer."""

from __future__ import annotations

import pytest
from models.bert.test_convert import minilm_folder
from models.bert.test_model import save_tiny_bert

from pollama.debug.compare import compare_model
from pollama.models.bert import model as bert_model
from pollama.models.bert.convert import convert

import transformers  # noqa: E402
from debug.test_compare import break_layer, skip

PROMPT_WORDS = "the quick brown fox"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF folder, our F32 GGUF, token ids) of a tiny random BertModel."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tok, _model = save_tiny_bert(folder, layers=3)
    out = folder.parent / "tiny-bert.gguf"
    convert(folder, out, outtype="f32")
    return folder, out, tok.encode(PROMPT_WORDS).ids


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_tiny_bert_within_tolerance(tiny, backend):
    folder, gguf, ids = tiny
    report, recording = compare_model(gguf, folder, ids, backend)
    assert recording.arch == "bert" and not report.diverges, report.table()
    assert [r.name for r in report.rows][:2] == ["token_embd", "blk.0.attn_out"] and len(report.rows) == 1 + 3 * 3


def test_missing_norm_in_one_layer_is_named(tiny, monkeypatch):
    folder, gguf, ids = tiny
    break_layer(monkeypatch, bert_model.Layer, "blk.1", skip("attn_output_norm"))
    report, _ = compare_model(gguf, folder, ids, "ggml")
    assert report.first_divergent.name == "blk.1.ffn_out"


def test_real_minilm_within_tolerance(tmp_path):
    folder = minilm_folder()
    gguf = tmp_path / "minilm.gguf"
    convert(folder, gguf, outtype="f32")
    ids = transformers.AutoTokenizer.from_pretrained(folder)("why is the sky blue?")["input_ids"]
    report, _ = compare_model(gguf, folder, ids, "ggml")
    assert not report.diverges and len(report.rows) == 1 + 6 * 3, report.table()
