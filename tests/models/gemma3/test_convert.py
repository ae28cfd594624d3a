"""HF Gemma 3 (text) checkpoints convert to GGUF "gemma3" files that compute what transformers does.

The tiny models use a byte-level BPE tokenizer.json (converted as "gpt2"): real Gemma ships a
SentencePiece tokenizer.model, which transformers cannot load here without the sentencepiece
package. That path is proven separately: a hand-made tokenizer.model, and the vocabulary of
the real Gemma 3 270M GGUF rebuilt from a tokenizer.model made of it.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from models.tinyhf import (
    TOLERANCE, Case, assert_tokenizer_matches, bpe_tokenizer, build_case, hf_greedy, max_logit_diff, our_greedy,
    read_gguf, transformers,
)
from realmodels import real_model
from pollama.create.convert import ConvertError, convert_hf
from pollama.fs.gguf import GGUFFile, read_metadata
from pollama.tokenizer import load_tokenizer
from pollama.tokenizer.convert import convert_tokenizer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
SLIDING, FULL = "sliding_attention", "full_attention"


def gemma3(tmp) -> Case:
    # Sliding window 4 (so it matters within the prompt), three local layers to one global,
    # linear RoPE scaling on the global layer only, head_dim 32 where hidden/heads is 16,
    # GQA, final logit soft-capping, tied embeddings, Gemma's special ids (pad 0, eos 1, bos 2).
    tok = bpe_tokenizer("gpt-2", SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True)
    rope = {SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}
    config = transformers.Gemma3TextConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=4,
        layer_types=[SLIDING, SLIDING, SLIDING, FULL], rope_parameters=rope, max_position_embeddings=256,
        final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    return build_case(tmp, transformers.Gemma3ForCausalLM, config, tok, stop_ids=[1, 5])


def gemma3_27b_layout(tmp) -> Case:
    # 62 layers, the count by which GGUF readers know Gemma 3 27B: its queries are scaled by
    # hidden/heads (16 here), not head_dim (32). The default 5 local : 1 global pattern.
    tok = bpe_tokenizer("llama-bpe", SPECIALS, bos="<bos>", eos="<eos>", add_bos=True)
    config = transformers.Gemma3TextConfig(
        vocab_size=384, hidden_size=64, intermediate_size=64, num_hidden_layers=62, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=16, sliding_window=3,
        max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return build_case(tmp, transformers.Gemma3ForCausalLM, config, tok, seed=4)


BUILDERS = {"gemma3": gemma3, "gemma3-62-layers": gemma3_27b_layout}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


# The 62 layers compound float32 rounding: measured 7.9e-6 (torch) and 8.5e-6 (ggml, exact
# GELU), where the 2-layer model gives 2.4e-6 and 2.6e-6.
EXACT_TOLERANCE = {"gemma3": TOLERANCE, "gemma3-62-layers": 2e-5}


def test_logits_match_transformers_on_torch(case, request):
    assert max_logit_diff(case, "torch") < EXACT_TOLERANCE[request.node.callspec.params["case"]]


def test_logits_match_transformers_on_ggml_with_exact_gelu(case, request):
    # POLLAMA_EXACT_GELU: GELU from its formula in float32, as transformers computes it.
    assert max_logit_diff(case, "ggml", exact_gelu=True) < EXACT_TOLERANCE[request.node.callspec.params["case"]]


# By default ggml's CPU GELU is an F16 lookup table, as in llama.cpp (whose numbers the real
# models must give): up to 4e-3 off, relative, per value. Against transformers with that same
# GELU, ggml agrees as closely as the other architectures do; the 62 layers of the second model
# compound what little of the table differs (F16 rounding of the table's own entries).
# Measured, max |ggml - transformers|:
#   gemma3            plain 1.4e-3, with ggml's GELU 7.5e-5, with POLLAMA_EXACT_GELU 2.6e-6
#   gemma3-62-layers  plain 5.3e-3, with ggml's GELU 2.1e-3, with POLLAMA_EXACT_GELU 8.5e-6
GGML_TOLERANCE = {"gemma3": 1.5e-4, "gemma3-62-layers": 5e-3}


def test_logits_match_transformers_with_the_gelu_table_on_ggml(case, request):
    name = request.node.callspec.params["case"]
    assert max_logit_diff(case, "ggml", ggml_gelu=True) < GGML_TOLERANCE[name]


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_greedy_tokens_match_generate(case, backend):
    assert our_greedy(case.gguf, backend, case.ids) == hf_greedy(case.model, case.ids)


def test_tokenizer_matches_hf(case):
    assert_tokenizer_matches(case)


def test_metadata_and_tensors(tmp_path):
    c = gemma3(tmp_path)
    md, tensors = read_gguf(c.gguf)
    assert md["general.architecture"] == "gemma3"
    assert md["gemma3.attention.key_length"] == 32 and md["gemma3.attention.sliding_window"] == 4
    assert md["gemma3.attention.sliding_window_pattern"] == [True, True, True, False]
    assert md["gemma3.rope.freq_base"] == 1e6 and md["gemma3.rope.local.freq_base"] == 1e4
    assert md["gemma3.rope.scaling.type"] == "linear" and md["gemma3.rope.scaling.factor"] == 8.0
    assert md["gemma3.final_logit_softcapping"] == 30.0
    assert md["tokenizer.ggml.eos_token_ids"] == [1, 5] and md["tokenizer.ggml.padding_token_id"] == 0
    assert "output.weight" not in tensors and tensors["blk.3.post_ffw_norm.weight"] == ("F32", (64,))
    # Norm weights carry Gemma's +1.
    hf_norm = c.model.model.layers[0].self_attn.q_norm.weight.detach().numpy()
    with GGUFFile(c.gguf) as f:
        ours = f.tensor_bytes("blk.0.attn_q_norm.weight").view(np.float32)
        assert np.array_equal(ours, hf_norm + 1)


def test_a_query_scale_gguf_cannot_express_is_refused(tmp_path):
    c = gemma3(tmp_path)
    config = json.loads((c.folder / "config.json").read_text())
    config["query_pre_attn_scalar"] = 24
    (c.folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match="query_pre_attn_scalar=24 cannot be stored in GGUF"):
        convert_hf(c.folder, tmp_path / "out.gguf")


# -- SentencePiece tokenizer.model ------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def sentencepiece_model(pieces: list[tuple[str, float, int]], add_dummy_prefix: bool = False) -> bytes:
    """A SentencePiece ModelProto (BPE) with these (piece, score, type) entries."""
    out = bytearray()
    for text, score, kind in pieces:
        body = _field(1, text.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", score) + _varint(3 << 3) + _varint(kind)
        out += _field(1, body)
    out += _field(2, _varint(3 << 3) + _varint(2))  # trainer_spec.model_type = BPE
    out += _field(3, _varint(3 << 3) + _varint(int(add_dummy_prefix)))  # normalizer_spec.add_dummy_prefix
    return bytes(out)


def test_sentencepiece_model_converts(tmp_path):
    pieces = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    merges = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁w", "or", "▁wor", "ld",
              "▁world", "<start_of_turn>"]
    pieces += [(t, -float(i), 4 if t == "<start_of_turn>" else 1) for i, t in enumerate(merges)]
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
    start = len(pieces) - 1
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
        "added_tokens_decoder": {str(start): {"content": "<start_of_turn>", "special": True}}}))
    md = convert_tokenizer(tmp_path, vocab_size=len(pieces) + 2)
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_space_prefix"] is False
    assert md["tokenizer.ggml.scores"][start - 1] == -16.0 and md["tokenizer.ggml.token_type"][start] == 3
    assert md["tokenizer.ggml.tokens"][-2:] == [f"[PAD{len(pieces)}]", f"[PAD{len(pieces) + 1}]"]
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (2, 1)
    assert md["tokenizer.ggml.unknown_token_id"] == 3 and md["tokenizer.ggml.add_bos_token"] is True

    tok = load_tokenizer(md)
    ids = tok.encode("<start_of_turn>hello world é", add_special=True, parse_special=True)
    # BOS, the special, merged pieces by score, and byte fallback for what the vocabulary lacks.
    assert [md["tokenizer.ggml.tokens"][i] for i in ids] == [
        "<bos>", "<start_of_turn>", "hello", "▁world", "▁", "<0xC3>", "<0xA9>"]


def test_sentencepiece_unigram_is_refused(tmp_path):
    model = sentencepiece_model([("<unk>", 0.0, 2), ("a", -1.0, 1)]).replace(
        _field(2, _varint(3 << 3) + _varint(2)), _field(2, _varint(3 << 3) + _varint(1)))
    (tmp_path / "tokenizer.model").write_bytes(model)
    with pytest.raises(ValueError, match="unigram"):
        convert_tokenizer(tmp_path)


def test_real_gemma3_vocabulary_round_trips(tmp_path):
    # The real Gemma 3 GGUF (llama.cpp's conversion) -> the tokenizer.model and tokenizer_config
    # it came from, in outline -> our conversion gives back its tokens, scores and types.
    real = read_metadata(real_model("gemma3-270m"))
    tokens, scores, types = (real[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    added = {}
    pieces = []
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types)):
        if kind in (3, 4):  # control and user-defined come from tokenizer_config's added_tokens_decoder
            added[str(i)] = {"content": text.replace(" ", "▁"), "special": kind == 3}
        pieces.append((text.replace(" ", "▁") if kind == 4 else text, score, 1 if kind in (3, 4) else kind))
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
        "added_tokens_decoder": added}))
    md = convert_tokenizer(tmp_path, vocab_size=len(tokens))
    assert md["tokenizer.ggml.tokens"] == tokens
    assert np.array_equal(np.float32(md["tokenizer.ggml.scores"]), np.float32(scores))
    assert md["tokenizer.ggml.token_type"] == types
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_space_prefix",
                "add_bos_token", "add_eos_token"):
        assert md[f"tokenizer.ggml.{key}"] == real[f"tokenizer.ggml.{key}"], key


def test_ollama_files_without_rope_scaling_get_it_by_size(tmp_path):
    # Ollama's Gemma 3 4B/12B/27B files have no rope.scaling.factor: its engine (and ours) scale
    # global RoPE by 8 from the layer count. Our converter always writes the factor, so the
    # 62-layer model converted here (really unscaled) stays unscaled.
    from pollama.fs.writer import write_gguf
    from pollama.models.base import load_model
    from pollama.ml.torch.backend import TorchBackend

    case = gemma3_27b_layout(tmp_path)
    stripped = tmp_path / "ollama-style.gguf"
    with GGUFFile(case.gguf) as src:
        assert src.metadata["gemma3.rope.scaling.factor"] == 1.0
        metadata = {k: v for k, v in src.metadata.items() if k != "gemma3.rope.scaling.factor"}
        tensors = [(n, src.tensor_bytes(n), t.type, t.shape) for n, t in src.tensors.items()]
        write_gguf(stripped, metadata, tensors, src.value_types, array_types=src.array_types)
    for path, freq_scale in ((case.gguf, 1.0), (stripped, 1 / 8)):
        backend = TorchBackend()
        with GGUFFile(path) as f:
            model = load_model(f, backend)
            assert model.global_rope.freq_scale == freq_scale
            assert model.local_rope.freq_scale == 1.0
        backend.close()
