"""A tiny random GptOssForCausalLM whose experts are stored in MXFP4 as the released checkpoints
store them (`*_blocks` + `*_scales`), and transformers holding the same weights dequantized by
its own code (transformers.integrations.mxfp4), in float32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.tinyhf import Case, bpe_tokenizer, convert, hf_ids, save_tiny, torch, transformers

from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

# A prompt longer than the sliding window, so the sliding layers drop keys the full ones keep.
PROMPT = "The quick brown fox jumps over the lazy dog. Hello world!"
WINDOW = 4
N_EXPERTS, N_USED = 8, 2
CHAT_TEMPLATE = "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}"

# OCP's e2m1 values by 4-bit code (sign bit, two exponent bits, one mantissa bit).
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def quantize_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OCP MXFP4 of rows w [..., n] (n a multiple of 32), laid out as OpenAI's checkpoints:
    blocks uint8 [..., n/32, 16] (values 2j, 2j+1 in byte j, low nibble first), scales uint8
    e8m0 [..., n/32]. Each block's scale is 2^(floor(log2 max|w|) - 2), the e2m1 maximum's
    exponent, and each value its nearest e2m1 code (the spec's rounding, saturating at 6)."""
    b = w.reshape(*w.shape[:-1], -1, 32).astype(np.float32)
    exponent = np.floor(np.log2(np.maximum(np.abs(b).max(-1), 2.0**-100))) - 2
    scaled = b / np.exp2(exponent)[..., None]
    codes = np.abs(scaled[..., None] - E2M1).argmin(-1).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    # Contiguous: safetensors.numpy.save_file writes an array's buffer whatever its strides.
    return np.ascontiguousarray(blocks), np.ascontiguousarray(exponent + 127, dtype=np.uint8)


def tokenizer():
    # o200k's split, as gpt-oss's tokenizer.json has it (llama.cpp's "gpt-4o").
    return bpe_tokenizer("gpt-4o", ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|start|>", "<|message|>", "<|end|>"],
                         eos="<|return|>", bos="<|startoftext|>", chat_template=CHAT_TEMPLATE)


def tiny_config(vocab_size: int, **overrides):
    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=N_EXPERTS,
        num_experts_per_tok=N_USED, sliding_window=WINDOW, max_position_embeddings=131072,
        # gpt-oss's own YaRN parameters, but truncated: ggml (and so llama.cpp and Ollama) always
        # rounds YaRN's correction range outward, which gpt-oss's config (truncate: false) does
        # not ask for (see test_model.py, test_untruncated_yarn_is_llama_cpps).
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": True, "original_max_position_embeddings": 4096},
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    cfg.update(overrides)
    return transformers.GptOssConfig(**cfg)


def store_experts_as_mxfp4(model, folder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Quantize each layer's experts to MXFP4 in the checkpoint's layout, give the HF model the
    weights transformers dequantizes from those blocks, and write the blocks in place of the
    float experts in the folder's safetensors. Returns {HF tensor stem: (blocks, scales)}."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    packed = {}
    for i, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        for proj in ("gate_up_proj", "down_proj"):
            param = getattr(experts, proj)  # [experts, in, out], as transformers multiplies x @ W
            blocks, scales = quantize_mxfp4(param.detach().transpose(1, 2).numpy())  # rows: [experts, out, in]
            with torch.no_grad():
                param.copy_(convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                       dtype=torch.float32))
            stem = f"model.layers.{i}.mlp.experts.{proj}"
            del tensors[stem]
            tensors[f"{stem}_blocks"], tensors[f"{stem}_scales"] = blocks, scales
            packed[stem] = (blocks, scales)
    save_file(tensors, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config))
    return packed


@pytest.fixture(scope="session")
def gptoss_case(tmp_path_factory):
    """The tiny MXFP4 checkpoint converted by our converter (F32 for the other weights)."""
    tmp = tmp_path_factory.mktemp("gptoss")
    tok = tokenizer()
    folder = tmp / "tiny"
    model = save_tiny(transformers.GptOssForCausalLM, tiny_config(len(tok)), tok, folder)
    with torch.no_grad():  # sinks of either sign and size, so some heads give most of their attention to them
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-2.0, 4.0, layer.self_attn.sinks.numel()))
    model.save_pretrained(folder)
    case = Case(model, None, folder, None, [])
    case.packed = store_experts_as_mxfp4(model, folder)
    case.gguf = convert(folder, tmp / "tiny.gguf")
    case.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    case.ids = hf_ids(case.tokenizer, PROMPT)
    assert len(case.ids) > 2 * WINDOW
    return case
