"""Ollama's own gpt-oss files (architecture `gptoss`) run, computing what transformers computes.

No such file is small enough to keep here, so the tiny checkpoint is laid out as Ollama's
converter (convert/convert_gptoss.go) writes one, from its two kinds of source: a Hugging Face
folder (separate Q/K/V) and OpenAI's original checkpoint (Q/K/V fused as attn_qkv). In both the
experts' gate and up are one tensor with alternating rows (`ffn_gate_up_exps`), and MXFP4 is
tensor type 4: each block the scale byte and then the checkpoint's 16 bytes as they are (values
2j, 2j+1 in byte j), which Ollama's loader (ml/backend/ggml/ggml.go) reorders for ggml. Its
other names: attn_out, attn_sinks, ffn_norm; its keys name no RoPE scaling type (YaRN is implied).
"""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest

from models.gptoss.test_model import TOLERANCE, reference
from models.tinyhf import our_logits, read_gguf, torch
from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf

from safetensors.numpy import load_file  # noqa: E402

OLLAMA_MXFP4 = 4  # Ollama's tensor type for MXFP4 (the retired Q4_2 slot)

LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_out", "self_attn.sinks": "attn_sinks",
               "post_attention_layernorm": "ffn_norm", "mlp.router": "ffn_gate_inp",
               "mlp.experts.gate_up_proj_bias": "ffn_gate_up_exps.bias", "mlp.experts.down_proj_bias": "ffn_down_exps.bias"}


def bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (truncated)."""
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


@contextlib.contextmanager
def bf16_expert_biases(model):
    """transformers with its experts' biases rounded as the Ollama file stores them (BF16)."""
    params = [p for layer in model.model.layers for p in (layer.mlp.experts.gate_up_proj_bias,
                                                           layer.mlp.experts.down_proj_bias)]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.copy_(torch.from_numpy((bf16(p.numpy()).astype(np.uint32) << 16).view(np.float32)))
        yield model
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


def ollama_tensors(case, fused_qkv: bool) -> tuple[list, list[str]]:
    """(tensors for write_gguf, names of the MXFP4 ones) of the tiny checkpoint in Ollama's layout."""
    hf = load_file(case.folder / "model.safetensors")
    out, mxfp4 = [], []

    def add(name, data):
        data = np.ascontiguousarray(data, dtype=np.float32)
        if name.endswith("_exps.bias"):  # BF16 in Ollama's files (its loader widens them to F32)
            out.append((name, bf16(data).reshape(-1).view(np.uint8), GGMLType.BF16, data.shape))
        else:
            out.append((name, data.reshape(-1).view(np.uint8), GGMLType.F32, data.shape))

    add("token_embd.weight", hf["model.embed_tokens.weight"])
    add("output_norm.weight", hf["model.norm.weight"])
    add("output.weight", hf["lm_head.weight"])
    for i in range(case.model.config.num_hidden_layers):
        hp = f"model.layers.{i}."
        for hf_name, name in LAYER_NAMES.items():
            for suffix in (".weight", ".bias", ""):
                if hp + hf_name + suffix in hf and not (fused_qkv and name in ("attn_q", "attn_k", "attn_v")):
                    add(f"blk.{i}.{name}{suffix}", hf[hp + hf_name + suffix])
        if fused_qkv:  # OpenAI's original checkpoint: one projection, rows q then k then v
            for suffix in (".weight", ".bias"):
                add(f"blk.{i}.attn_qkv{suffix}", np.concatenate(
                    [hf[f"{hp}self_attn.{p}_proj{suffix}"] for p in "qkv"], axis=0))
        for proj, name in (("gate_up_proj", "ffn_gate_up_exps"), ("down_proj", "ffn_down_exps")):
            blocks, scales = hf[f"{hp}mlp.experts.{proj}_blocks"], hf[f"{hp}mlp.experts.{proj}_scales"]
            raw = np.concatenate([scales[..., None], blocks], axis=-1)  # the checkpoint's bytes, scale first
            e, rows, n, _ = blocks.shape
            out.append((f"blk.{i}.{name}.weight", raw.reshape(-1), GGMLType.MXFP4, (e, rows, n * 32)))
            mxfp4.append(f"blk.{i}.{name}.weight")
    return out, mxfp4


def retype(path, names: list[str], new_type: int) -> None:
    """Rewrite the type field of the named tensors' header entries (our writer writes only ggml's types)."""
    data = bytearray(path.read_bytes())
    for name in names:
        key = struct.pack("<Q", len(name.encode())) + name.encode()
        at = data.index(key) + len(key)
        (n_dims,) = struct.unpack_from("<I", data, at)
        at += 4 + 8 * n_dims
        assert struct.unpack_from("<I", data, at)[0] == GGMLType.MXFP4
        struct.pack_into("<I", data, at, new_type)
    path.write_bytes(bytes(data))


def write_ollama_file(case, path, fused_qkv: bool):
    md, _ = read_gguf(case.gguf)
    c = case.model.config
    rope = c.rope_parameters
    metadata = {k: v for k, v in md.items() if k.startswith("tokenizer.")}
    # Ollama's gptoss model splits as o200k in code, whatever the file names (see test_tokenizer).
    metadata["tokenizer.ggml.pre"] = "default"
    metadata.update({
        "general.architecture": "gptoss", "general.file_type": 4,
        "gptoss.context_length": c.max_position_embeddings, "gptoss.block_count": c.num_hidden_layers,
        "gptoss.embedding_length": c.hidden_size, "gptoss.feed_forward_length": c.intermediate_size,
        "gptoss.expert_count": c.num_local_experts, "gptoss.expert_used_count": c.num_experts_per_tok,
        "gptoss.attention.head_count": c.num_attention_heads, "gptoss.attention.head_count_kv": c.num_key_value_heads,
        "gptoss.attention.key_length": c.head_dim, "gptoss.attention.value_length": c.head_dim,
        "gptoss.attention.layer_norm_rms_epsilon": c.rms_norm_eps, "gptoss.attention.sliding_window": c.sliding_window,
        "gptoss.rope.freq_base": rope["rope_theta"], "gptoss.rope.scaling.factor": rope["factor"],
        "gptoss.rope.scaling.original_context_length": rope["original_max_position_embeddings"],
    })
    tensors, mxfp4 = ollama_tensors(case, fused_qkv)
    write_gguf(path, metadata, tensors)
    retype(path, mxfp4, OLLAMA_MXFP4)
    return path


@pytest.fixture(scope="module", params=["hf-folder", "original-checkpoint"])
def ollama_file(gptoss_case, tmp_path_factory, request):
    path = tmp_path_factory.mktemp("ollama") / "gptoss.gguf"
    return write_ollama_file(gptoss_case, path, fused_qkv=request.param == "original-checkpoint")


def test_the_file_is_in_ollamas_layout(ollama_file):
    with GGUFFile(ollama_file) as f:
        info = f.tensors["blk.0.ffn_gate_up_exps.weight"]
        assert info.paired_codes and info.type == GGMLType.MXFP4 and info.shape == (8, 64, 64)
        assert f.metadata["general.architecture"] == "gptoss" and "gptoss.rope.scaling.type" not in f.metadata
        # Read as it is stored, the codes are not ggml's: only tensor_data() reorders them.
        assert not np.array_equal(f.tensor_bytes(info.name), f.tensor_data(info.name))
        assert f.tensors["blk.0.ffn_gate_up_exps.bias"].type == GGMLType.BF16


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_ollama_files_match_transformers(gptoss_case, ollama_file, backend):
    ours = our_logits(ollama_file, backend, gptoss_case.ids)
    with bf16_expert_biases(gptoss_case.model):
        want = reference(gptoss_case, backend)
    assert np.abs(ours - want).max() < TOLERANCE[backend]
    # The biases' rounding is itself beyond the tolerance: the comparison sees them.
    assert np.abs(want - reference(gptoss_case, backend)).max() > 10 * TOLERANCE[backend]


def test_tokenizer_splits_as_o200k(gptoss_case, ollama_file):
    """Whatever pre-tokenizer an Ollama gptoss file names (here llama.cpp's "default"), its text
    is split as o200k, as Ollama's model code fixes it: the ids are transformers'."""
    from models.tinyhf import TEST_TEXTS, hf_ids
    from pollama.tokenizer import load_tokenizer

    md, _ = read_gguf(ollama_file)
    ours = load_tokenizer(md)
    assert md["tokenizer.ggml.pre"] == "default"
    for text in TEST_TEXTS:
        assert ours.encode(text, add_special=True, parse_special=True) == hf_ids(gptoss_case.tokenizer, text), text
    default = load_tokenizer({**md, "general.architecture": "gpt-oss"})  # a file naming "default" otherwise
    assert any(default.encode(t, add_special=True, parse_special=True) != hf_ids(gptoss_case.tokenizer, t)
               for t in TEST_TEXTS)
