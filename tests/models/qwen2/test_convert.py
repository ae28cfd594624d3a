"""HF Qwen2 checkpoints convert to GGUF "qwen2" files that compute what transformers does."""

from __future__ import annotations

import pytest

from models.tinyhf import (
    TOLERANCE, Case, assert_tokenizer_matches, bpe_tokenizer, build_case, hf_greedy, max_logit_diff, our_greedy,
    read_gguf, transformers,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def qwen2(tmp) -> Case:
    # Qwen2.5-0.5B's layout: GQA, Q/K/V biases, tied embeddings, no BOS, two end ids.
    tok = bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML)
    config = transformers.Qwen2Config(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, use_sliding_window=False, bos_token_id=0, eos_token_id=2)
    return build_case(tmp, transformers.Qwen2ForCausalLM, config, tok, stop_ids=[2, 0])


def qwen2_yarn(tmp) -> Case:
    # YaRN context extension (Qwen2.5's long-context setting), untied output, one K/V head.
    tok = bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>")
    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 64}
    config = transformers.Qwen2Config(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=256, rope_parameters=rope, tie_word_embeddings=False,
        use_sliding_window=False, eos_token_id=2)
    return build_case(tmp, transformers.Qwen2ForCausalLM, config, tok, seed=3)


BUILDERS = {"qwen2": qwen2, "qwen2-yarn": qwen2_yarn}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_logits_match_transformers(case, backend):
    assert max_logit_diff(case, backend) < TOLERANCE


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_greedy_tokens_match_generate(case, backend):
    assert our_greedy(case.gguf, backend, case.ids) == hf_greedy(case.model, case.ids)


def test_tokenizer_matches_hf(case):
    assert_tokenizer_matches(case)


def test_metadata_and_tensors(tmp_path):
    c = qwen2(tmp_path)
    md, tensors = read_gguf(c.gguf)
    assert md["general.architecture"] == "qwen2" and md["qwen2.rope.freq_base"] == 1e6
    assert tensors["blk.0.attn_q.bias"] == ("F32", (64,)) and tensors["blk.0.attn_k.bias"] == ("F32", (32,))
    assert "output.weight" not in tensors
    assert md["tokenizer.ggml.pre"] == "qwen2" and md["tokenizer.ggml.add_bos_token"] is False
    assert md["tokenizer.ggml.eos_token_id"] == 2 and md["tokenizer.ggml.eos_token_ids"] == [2, 0]
    assert md["tokenizer.ggml.padding_token_id"] == 0 and md["tokenizer.chat_template"] == CHATML


def test_yarn_keys(tmp_path):
    md, _ = read_gguf(qwen2_yarn(tmp_path).gguf)
    assert md["qwen2.rope.scaling.type"] == "yarn" and md["qwen2.rope.scaling.factor"] == 4.0
    assert md["qwen2.rope.scaling.original_context_length"] == 64
