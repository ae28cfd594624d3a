"""HF Qwen3 and Qwen3-MoE checkpoints convert to GGUF "qwen3" / "qwen3moe" files that compute
what transformers does, route tokens to the experts transformers routes them to, and load in
llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from models.tinyhf import (
    Case, assert_tokenizer_matches, bpe_tokenizer, build_case, convert, hf_greedy, hf_logits, our_greedy,
    our_logits, read_gguf, torch, transformers,
)
from rowsapart import rows_apart_and_one_at_a_time
from realmodels import llamacpp_greedy, llamacpp_loads

from pollama.create.convert import supported_architectures
from pollama.create.pipeline import create_model
from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf
from pollama.models import discovery
from pollama.models.base import architectures, model_class
from pollama.models.qwen3.convert import Qwen3Converter, Qwen3MoeConverter
from pollama.models.qwen3.model import Qwen3, Qwen3Moe
from pollama.debug.steps import StepEngine
from pollama.store.store import Store

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# max |ours - transformers| over the prompt's logits, float32 weights and cache. Measured (ggml /
# torch): qwen3 1.9e-6 / 1.4e-6; qwen3moe 2.0e-6 / 1.5e-6; qwen3moe-dense-layer 1.5e-6 / 1.9e-6.
TOLERANCE = 4e-6


def tokenizer():
    return bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)


def qwen3(tmp) -> Case:
    # Qwen3-0.6B's layout: GQA, head size apart from hidden/heads, QK-norm, tied embeddings.
    config = transformers.Qwen3Config(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=2)
    return build_case(tmp, transformers.Qwen3ForCausalLM, config, tokenizer(), stop_ids=[2, 0])


def qwen3moe(tmp) -> Case:
    # Qwen3-30B-A3B's layout: every layer sparse, 8 experts of which 2 per token (128 / 8 there),
    # routing weights renormalised (norm_topk_prob), untied output.
    config = transformers.Qwen3MoeConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False, eos_token_id=2)
    return build_case(tmp, transformers.Qwen3MoeForCausalLM, config, tokenizer(), seed=1)


def qwen3moe_dense_layer(tmp) -> Case:
    # What transformers' config allows beyond the published models: a dense layer between sparse
    # ones (mlp_only_layers), 4 of 8 experts, weights not renormalised.
    config = transformers.Qwen3MoeConfig(
        vocab_size=384, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, num_experts=8, num_experts_per_tok=4,
        norm_topk_prob=False, mlp_only_layers=[1], max_position_embeddings=256, rope_theta=1e6,
        tie_word_embeddings=True, eos_token_id=2)
    return build_case(tmp, transformers.Qwen3MoeForCausalLM, config, tokenizer(), seed=2)


BUILDERS = {"qwen3": qwen3, "qwen3moe": qwen3moe, "qwen3moe-dense-layer": qwen3moe_dense_layer}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Case:
    return qwen3moe(tmp_path_factory.mktemp("moe"))


def logit_diff(gguf, case: Case, backend: str) -> float:
    return float(np.abs(our_logits(gguf, backend, case.ids) - hf_logits(case.model, case.ids)).max())


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_logits_match_transformers(case, backend):
    assert logit_diff(case.gguf, case, backend) < TOLERANCE


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_greedy_tokens_match_generate(case, backend):
    # With an F32 cache: the qwen3 case's step 14 is a near tie (349 over 347 by 7.6e-4 in
    # transformers' logits), which rounding K/V to F16 (2e-3 on the logits, measured) flips.
    assert our_greedy(case.gguf, backend, case.ids, f32_cache=True) == hf_greedy(case.model, case.ids)


def test_tokenizer_matches_hf(case):
    assert_tokenizer_matches(case)


def hf_chosen_experts(case: Case) -> list[list[frozenset[int]]]:
    """transformers' experts for each position of the prompt, per sparse layer."""
    with torch.no_grad():
        out = case.model(torch.tensor([case.ids]), output_router_logits=True)
    k = case.model.config.num_experts_per_tok
    return [[frozenset(row.topk(k).indices.tolist()) for row in logits] for logits in out.router_logits]


def test_tokens_are_routed_to_different_experts(moe):
    # Were every position sent to the same experts, a wrong top-k or an expert-index mix-up could
    # go unseen: here each layer picks several different pairs for the prompt's 10 positions
    # (measured: 6 of the 8 experts used in each layer).
    for layer in hf_chosen_experts(moe):
        assert len(set(layer)) >= 3
        assert len(frozenset().union(*layer)) >= 5


def variant(case: Case, out, **metadata):
    """A copy of the case's GGUF with some qwen3moe.* keys replaced."""
    with GGUFFile(case.gguf) as g:
        tensors = [(i.name, np.array(g.tensor_bytes(i.name)), i.type, i.shape) for i in g.tensors.values()]
        write_gguf(out, {**g.metadata, **{f"qwen3moe.{k}": v for k, v in metadata.items()}}, tensors,
                   g.value_types, array_types=g.array_types)
    return out


@pytest.mark.parametrize("broken", [
    {"norm_top_k_prob": False},  # the chosen experts' weights left as they come from the softmax
    {"expert_used_count": 1},  # top-1 instead of top-2
    {"expert_used_count": 3},  # top-3
], ids=["not-normalised", "top-1", "top-3"])
@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_broken_routing_fails_the_comparison(moe, tmp_path, backend, broken):
    # The same weights routed another way are far off (measured 1.0, 1.5 and 1.16 on both
    # backends), so the comparison above sees routing.
    assert logit_diff(moe.gguf, moe, backend) < TOLERANCE
    assert logit_diff(variant(moe, tmp_path / "broken.gguf", **broken), moe, backend) > 0.3


def test_registered_for_create_and_load():
    assert {"qwen3", "qwen3moe"} <= set(architectures())
    assert model_class("qwen3") is Qwen3 and model_class("qwen3moe") is Qwen3Moe
    assert discovery.folder_for("qwen3moe") == "qwen3"  # a runner loading a qwen3moe file first finds it
    converters = supported_architectures()
    assert converters["Qwen3ForCausalLM"] is Qwen3Converter and converters["Qwen3MoeForCausalLM"] is Qwen3MoeConverter


def test_qwen3_metadata_and_tensors(tmp_path):
    md, tensors = read_gguf(qwen3(tmp_path).gguf)
    assert md["general.architecture"] == "qwen3" and md["qwen3.rope.freq_base"] == 1e6
    assert md["qwen3.attention.key_length"] == 32 and md["qwen3.attention.value_length"] == 32
    assert tensors["blk.0.attn_q.weight"] == ("F32", (128, 64)) and tensors["blk.0.attn_q_norm.weight"] == ("F32", (32,))
    assert tensors["blk.1.attn_k_norm.weight"] == ("F32", (32,)) and "blk.0.attn_q.bias" not in tensors
    assert "output.weight" not in tensors
    assert md["tokenizer.ggml.pre"] == "qwen2" and md["tokenizer.chat_template"] == CHATML


def test_qwen3moe_metadata_and_tensors(moe):
    md, tensors = read_gguf(moe.gguf)
    assert md["general.architecture"] == "qwen3moe"
    assert md["qwen3moe.expert_count"] == 8 and md["qwen3moe.expert_used_count"] == 2
    assert md["qwen3moe.expert_feed_forward_length"] == 32 and md["qwen3moe.feed_forward_length"] == 128
    assert md["qwen3moe.norm_top_k_prob"] is True
    # PyTorch order: [experts, out, in]; GGUF's ne is the reverse, as llama.cpp creates them.
    assert tensors["blk.1.ffn_gate_inp.weight"] == ("F32", (8, 64))
    assert tensors["blk.1.ffn_gate_exps.weight"] == ("F32", (8, 32, 64))
    assert tensors["blk.1.ffn_up_exps.weight"] == ("F32", (8, 32, 64))
    assert tensors["blk.1.ffn_down_exps.weight"] == ("F32", (8, 64, 32))
    assert not any(".ffn_gate.weight" in name or "experts" in name for name in tensors)
    assert "output.weight" in tensors


def test_f16_conversion_keeps_the_router_f32(moe, tmp_path):
    # As llama.cpp's converter: the router's scores decide discretely, so it is not rounded.
    _, tensors = read_gguf(convert(moe.folder, tmp_path / "f16.gguf", outtype="f16"))
    assert tensors["blk.0.ffn_gate_inp.weight"] == ("F32", (8, 64))
    assert tensors["blk.0.ffn_up_exps.weight"] == ("F16", (8, 32, 64))


def test_dense_layers_keep_their_mlp(tmp_path):
    _, tensors = read_gguf(qwen3moe_dense_layer(tmp_path).gguf)
    assert tensors["blk.1.ffn_gate.weight"] == ("F32", (96, 64)) and "blk.1.ffn_gate_inp.weight" not in tensors
    assert tensors["blk.0.ffn_down_exps.weight"] == ("F32", (8, 64, 32))


def test_stacked_experts_are_the_checkpoints_experts_in_order(moe):
    with GGUFFile(moe.gguf) as g:
        stacked = np.array(g.tensor_bytes("blk.0.ffn_down_exps.weight")).view(np.float32).reshape(8, 64, 32)
    for e, expert in enumerate(moe.model.model.layers[0].mlp.experts.down_proj.detach().numpy()):
        np.testing.assert_array_equal(stacked[e], expert)


@pytest.mark.parametrize("quantize", [None, "q4_0"])
def test_experts_rows_apart_equal_one_token_steps_bit_for_bit(moe, tmp_path, quantize):
    # Speculative decoding verifies drafts in one batch computed rows apart, and must get each
    # row's one-token logits exactly: mul_mat_id and the routing ops must not mix rows either.
    path = moe.gguf
    if quantize:
        store = Store(tmp_path / "store")
        create_model(store, "moe:q", f"FROM {moe.folder}\n", tmp_path, quantize=quantize)
        path = store.resolve("moe:q").model_path
    with StepEngine(path, num_ctx=256) as engine:
        together, one_at_a_time = rows_apart_and_one_at_a_time(engine, (moe.ids * 6)[:58])
    assert np.array_equal(together, one_at_a_time)


@pytest.mark.parametrize("build", [qwen3, qwen3moe], ids=["qwen3", "qwen3moe"])
def test_llama_cpp_loads_our_file(tmp_path, build):
    llamacpp_loads(build(tmp_path).gguf)


@pytest.mark.parametrize("build", [qwen3, qwen3moe], ids=["qwen3", "qwen3moe"])
def test_llama_cpp_computes_transformers_greedy_tokens_from_our_file(tmp_path, build):
    # Beyond loading: llama.cpp reads the keys and the stacked experts as we mean them (the
    # experts' order and orientation, the router, QK-norm, NeoX RoPE), so its 16 greedy tokens
    # are transformers' too.
    c = build(tmp_path)
    assert llamacpp_greedy(c.gguf, c.ids, 16) == hf_greedy(c.model, c.ids)
