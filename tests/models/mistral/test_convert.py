"""HF MistralForCausalLM -> GGUF "mistral" (on request) computes what transformers does, window included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models.tinyhf import (
    TOLERANCE,
    Case,
    bpe_tokenizer,
    convert,
    hf_greedy,
    hf_ids,
    hf_logits,
    our_greedy,
    our_logits,
    read_gguf,
    save_tiny,
    transformers,
)

from pollama.create.convert import ConvertError
from pollama.models.mistral.convert import convert as convert_mistral
from pollama.models.mistral.convert import main as convert_main

WINDOW = 4
# Long enough (28 tokens with BOS) that the window matters at most positions.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. Hello world!"


def mistral_case(tmp, sliding_window: int | None = WINDOW, seed: int = 5) -> Case:
    """Mistral 7B v0.1's layout, tiny: GQA, head_dim 32 (not hidden/heads), a sliding window."""
    tok = bpe_tokenizer("gpt-2", ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", add_bos=True)
    config = transformers.MistralConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=1e6,
        sliding_window=sliding_window, bos_token_id=1, eos_token_id=2)
    folder = tmp / "tiny-mistral"
    model = save_tiny(transformers.MistralForCausalLM, config, tok, folder, seed=seed)
    gguf = tmp / "tiny-mistral.gguf"
    convert_mistral(folder, gguf, outtype="f32")
    saved = transformers.AutoTokenizer.from_pretrained(folder)
    return Case(model, saved, folder, gguf, hf_ids(saved, LONG_PROMPT))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return mistral_case(tmp_path_factory.mktemp("mistral"))


def test_metadata_keeps_the_window(case):
    md, tensors = read_gguf(case.gguf)
    assert md["general.architecture"] == "mistral" and md["general.file_type"] == 0
    assert md["mistral.attention.sliding_window"] == WINDOW
    assert md["mistral.attention.key_length"] == 32 and md["mistral.rope.dimension_count"] == 32
    assert md["mistral.block_count"] == 2 and md["mistral.rope.freq_base"] == 1e6
    assert tensors["blk.0.attn_q.weight"] == ("F32", (128, 64)) and "output.weight" in tensors


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_logits_match_transformers_past_the_window(case, backend):
    assert len(case.ids) > 3 * WINDOW
    assert np.abs(our_logits(case.gguf, backend, case.ids) - hf_logits(case.model, case.ids)).max() < TOLERANCE


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_greedy_tokens_match_generate(case, backend):
    # Decoding one token at a time through the windowed cache, well past the window.
    assert our_greedy(case.gguf, backend, case.ids) == hf_greedy(case.model, case.ids)


def test_create_still_writes_llama_which_ignores_the_window(case, tmp_path):
    # The default conversion (what `pollama create` does) stays Ollama's and llama.cpp's "llama".
    llama_file = convert(case.folder, tmp_path / "as-llama.gguf")
    md, _ = read_gguf(llama_file)
    assert md["general.architecture"] == "llama" and "llama.attention.sliding_window" not in md
    # Whole-context attention: the same up to the window, different after it.
    diff = np.abs(our_logits(llama_file, "torch", case.ids) - hf_logits(case.model, case.ids)).max(axis=1)
    assert diff[:WINDOW].max() < TOLERANCE and diff[WINDOW:].max() > 1e-2


def test_without_a_window_it_is_llama(tmp_path):
    c = mistral_case(tmp_path, sliding_window=None, seed=6)
    md, _ = read_gguf(c.gguf)
    assert "mistral.attention.sliding_window" not in md
    llama_file = convert(c.folder, tmp_path / "as-llama.gguf")
    assert np.array_equal(our_logits(c.gguf, "ggml", c.ids), our_logits(llama_file, "ggml", c.ids))


def test_refuses_other_architectures_in_one_line(case, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    config = json.loads((case.folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConvertError, match="not \\['MistralForCausalLM'\\]") as e:
        convert_mistral(folder, tmp_path / "out.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "out.gguf").exists()
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": -1}))
    with pytest.raises(ConvertError, match="sliding_window must be a positive integer"):
        convert_mistral(folder, tmp_path / "out.gguf")


def test_command_line(case, tmp_path, capsys):
    assert convert_main([str(case.folder), str(tmp_path / "m.gguf"), "--outtype", "f32"]) == 0
    assert (tmp_path / "m.gguf").read_bytes() == case.gguf.read_bytes()
    assert convert_main([str(tmp_path / "nothing"), str(tmp_path / "x.gguf")]) == 1
    assert "nothing: no such folder" in capsys.readouterr().err
