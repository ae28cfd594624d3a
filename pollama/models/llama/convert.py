"""HF LlamaForCausalLM / MistralForCausalLM (SmolLM, Mistral 7B, ...) -> GGUF "llama"."""

from __future__ import annotations

import logging
import math

import numpy as np

from pollama.models.convert import ATTENTION_LAYER_NAMES, ConvertError, ModelConverter, rope_scaling_metadata

log = logging.getLogger(__name__)

# HF name inside `model.layers.N.` -> GGUF name inside `blk.N.`.
LAYER_NAMES = {
    **ATTENTION_LAYER_NAMES,
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


class LlamaConverter(ModelConverter):
    arch = "llama"
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    layer_names = LAYER_NAMES

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_act", ("silu",), "silu")
        window = c.get("sliding_window")
        if window and window < c.get("max_position_embeddings", 0):
            # As llama.cpp: the llama architecture has no sliding window; it only matters past it.
            log.warning("sliding_window=%d is not kept: attention will see the whole context", window)
        rope = c.rope()
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=2048)
        md["rope.freq_base"] = float(rope["rope_theta"])
        md["rope.dimension_count"] = self.head_dim()
        if rope["rope_type"] != "llama3":  # Llama 3.1's scaling is a tensor (see extra_tensors)
            md.update(rope_scaling_metadata(rope))
        return md

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # HF rotates the two halves of each head; ggml's normal RoPE rotates adjacent pairs.
        # Interleaving each head's halves makes one equal to the other.
        if ".attn_q." in name:
            return interleave_halves(data, self.cfg.require("num_attention_heads"))
        if ".attn_k." in name:
            heads = self.cfg.require("num_attention_heads")
            return interleave_halves(data, self.cfg.get("num_key_value_heads", heads))
        return data

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        rope = self.cfg.rope()
        if rope["rope_type"] != "llama3":
            return []
        return [("rope_freqs.weight", llama3_freq_factors(rope, self.head_dim()))]


def interleave_halves(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered [x0..x(d/2-1), y0..] -> [x0, y0, x1, y1, ...] (weight or bias)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_freq_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's per-frequency divisors: long wavelengths slowed by `factor`, a smooth ramp between."""
    try:
        factor = float(rope["factor"])
        low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_ctx = float(rope["original_max_position_embeddings"])
    except KeyError as e:
        raise ConvertError(f"config.json llama3 rope parameters lack {e.args[0]!r}") from None
    freqs = 1.0 / float(rope["rope_theta"]) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factors = []
    for wavelen in 2 * math.pi / freqs:
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (LlamaConverter,)
