"""HF gpt-oss checkpoints (experts in MXFP4) convert to GGUF "gpt-oss" files as llama.cpp writes
them, the MXFP4 blocks carried over without dequantizing, decoded by both backends exactly as
transformers decodes the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from models.tinyhf import assert_tokenizer_matches, read_gguf, torch
from models.gptoss.tiny import CHAT_TEMPLATE, N_EXPERTS, N_USED, WINDOW
from pollama.fs.ggml_types import FileType, GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.ml.ggml.quantize import dequantize_rows
from pollama.ml.torch.quants import dequantize
from pollama.fs.mxfp4 import from_checkpoint as mxfp4_to_ggml
from realmodels import llamacpp_loads

from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402


def hf_dequantized(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """transformers' own MXFP4 decoding of checkpoint blocks, as rows [..., rows, in]."""
    return convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                      dtype=torch.float32).transpose(1, 2).numpy()


def both_backends(raw: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {"ggml": dequantize_rows(raw, GGMLType.MXFP4, shape),
            "torch": dequantize(raw, GGMLType.MXFP4, shape).numpy()}


def test_mxfp4_decodes_as_transformers_on_every_code_and_scale():
    """Every e2m1 code in both nibbles, every e8m0 scale but NaN's 255: ggml's and the torch
    backend's MXFP4 equal transformers' (OCP's table times 2^(e - 127)) bit for bit."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(2, 255, 4, 16), dtype=np.uint8)
    blocks[0, :, 0, :] = np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(16, axis=0)[:255]
    scales = np.broadcast_to(np.arange(255, dtype=np.uint8)[None, :, None], (2, 255, 4)).copy()
    want = hf_dequantized(blocks, scales)  # [2, 255, 128]
    for name, got in both_backends(mxfp4_to_ggml(blocks, scales), want.shape).items():
        np.testing.assert_array_equal(got, want, err_msg=name)
    tiny = (want != 0) & (np.abs(want) < 2.0**-126)
    assert np.isinf(want).any() and tiny.any()  # overflowing and subnormal values included


def test_gguf_layout(gptoss_case):
    md, tensors = read_gguf(gptoss_case.gguf)
    assert md["general.architecture"] == "gpt-oss"
    assert md["general.file_type"] == FileType.MXFP4_MOE  # as llama.cpp labels a converted MXFP4 checkpoint
    expected = {
        "block_count": 2, "embedding_length": 64, "feed_forward_length": 32, "expert_feed_forward_length": 32,
        "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16,
        "attention.value_length": 16, "expert_count": N_EXPERTS, "expert_used_count": N_USED,
        "attention.sliding_window": WINDOW, "attention.sliding_window_pattern": [True, False],
        "rope.freq_base": 150000.0, "rope.scaling.type": "yarn", "rope.scaling.factor": 32.0,
        "rope.scaling.original_context_length": 4096, "context_length": 131072,
    }
    for key, value in expected.items():
        assert md[f"gpt-oss.{key}"] == value, key
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert md["tokenizer.ggml.pre"] == "gpt-4o"  # o200k's split, as llama.cpp names it
    for i in range(2):
        b = f"blk.{i}."
        assert tensors[b + "ffn_gate_exps.weight"] == ("MXFP4", (N_EXPERTS, 32, 64))
        assert tensors[b + "ffn_up_exps.weight"] == ("MXFP4", (N_EXPERTS, 32, 64))
        assert tensors[b + "ffn_down_exps.weight"] == ("MXFP4", (N_EXPERTS, 64, 32))
        for name, shape in [("ffn_gate_exps.bias", (N_EXPERTS, 32)), ("ffn_up_exps.bias", (N_EXPERTS, 32)),
                            ("ffn_down_exps.bias", (N_EXPERTS, 64)), ("ffn_gate_inp.weight", (N_EXPERTS, 64)),
                            ("ffn_gate_inp.bias", (N_EXPERTS,)), ("attn_sinks.weight", (4,)),
                            ("attn_q.bias", (64,)), ("attn_output.bias", (64,)), ("post_attention_norm.weight", (64,))]:
            assert tensors[b + name] == ("F32", shape), name
    assert not any("blocks" in n or "scales" in n for n in tensors)


def test_experts_are_the_checkpoints_mxfp4(gptoss_case):
    """The file's expert weights are the checkpoint's blocks, repacked: both backends decode
    them to exactly what transformers computes with (gate and up are the alternate rows of its
    fused gate_up_proj, each with its bias)."""
    hf = gptoss_case.model.model.layers
    with GGUFFile(gptoss_case.gguf) as f:
        for i in range(2):
            experts = hf[i].mlp.experts
            gate_up = experts.gate_up_proj.detach().transpose(1, 2).numpy()  # [experts, 2 * ff, dim]
            want = {"ffn_gate_exps": gate_up[:, 0::2], "ffn_up_exps": gate_up[:, 1::2],
                    "ffn_down_exps": experts.down_proj.detach().transpose(1, 2).numpy()}
            for name, values in want.items():
                info = f.tensors[f"blk.{i}.{name}.weight"]
                raw = f.tensor_bytes(info.name)
                blocks, scales = gptoss_case.packed[f"model.layers.{i}.mlp.experts.{'down_proj' if 'down' in name else 'gate_up_proj'}"]
                rows = slice(None) if "down" in name else slice(0 if "gate" in name else 1, None, 2)
                np.testing.assert_array_equal(raw.reshape(values.shape[0], -1), mxfp4_to_ggml(blocks[:, rows], scales[:, rows])
                                              .reshape(values.shape[0], -1))  # written as they are
                for backend, got in both_backends(raw, info.shape).items():
                    np.testing.assert_array_equal(got, values, err_msg=f"{backend} blk.{i}.{name}")
            bias = experts.gate_up_proj_bias.detach().numpy()
            np.testing.assert_array_equal(f.tensor_bytes(f"blk.{i}.ffn_gate_exps.bias").view("<f4").reshape(bias[:, 0::2].shape),
                                          bias[:, 0::2])
            np.testing.assert_array_equal(f.tensor_bytes(f"blk.{i}.ffn_up_exps.bias").view("<f4").reshape(bias[:, 1::2].shape),
                                          bias[:, 1::2])


def test_tokenizer_matches(gptoss_case):
    assert_tokenizer_matches(gptoss_case)


def test_llamacpp_loads_the_file(gptoss_case):
    llamacpp_loads(gptoss_case.gguf)


def test_float_experts_convert_too(gptoss_case, tmp_path):
    """A checkpoint transformers saved after dequantizing (float gate_up_proj [experts, dim, 2 * ff])
    converts to the same expert values, as F32."""
    from models.tinyhf import convert

    folder = tmp_path / "float"
    gptoss_case.model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((gptoss_case.folder / name).read_bytes())
    md, tensors = read_gguf(convert(folder, tmp_path / "float.gguf"))
    assert tensors["blk.0.ffn_gate_exps.weight"] == ("F32", (N_EXPERTS, 32, 64))
    assert md["general.file_type"] == FileType.ALL_F32
    with GGUFFile(tmp_path / "float.gguf") as f, GGUFFile(gptoss_case.gguf) as q:
        for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            info = q.tensors[f"blk.1.{name}.weight"]
            mx = dequantize_rows(q.tensor_bytes(info.name), GGMLType.MXFP4, info.shape)
            np.testing.assert_array_equal(f.tensor_bytes(f"blk.1.{name}.weight").view("<f4").reshape(info.shape), mx)


@pytest.mark.parametrize("bad", ["swiglu_limit", "layer_types"])
def test_configs_it_cannot_store_are_refused(gptoss_case, tmp_path, bad):
    import json
    import shutil

    from pollama.models.convert import ConvertError
    from models.tinyhf import convert

    folder = tmp_path / "bad"
    shutil.copytree(gptoss_case.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update({"swiglu_limit": 5.0} if bad == "swiglu_limit" else {"layer_types": ["full_attention"]})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match=bad):
        convert(folder, tmp_path / "bad.gguf")


def test_quantizing_the_mxfp4_file_is_refused(gptoss_case, tmp_path):
    """As Ollama refuses to quantize its gpt-oss files: the experts already are 4-bit."""
    from pollama.create.quantize import QuantizeError, quantize_gguf

    with pytest.raises(QuantizeError, match="only supported for F16, BF16 and F32"):
        quantize_gguf(gptoss_case.gguf, tmp_path / "q.gguf", "q4_K_M")


def test_registered_for_create_and_load():
    from pollama.create.convert import supported_architectures
    from pollama.models.base import architectures, model_class
    from pollama.models.gptoss.convert import GptOssConverter
    from pollama.models.gptoss.model import GptOss

    assert supported_architectures()["GptOssForCausalLM"] is GptOssConverter
    assert "gpt-oss" in architectures() and model_class("gpt-oss") is GptOss
