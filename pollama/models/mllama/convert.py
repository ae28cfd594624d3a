"""HF MllamaForConditionalGeneration (Llama 3.2 Vision) -> one GGUF "mllama": text, vision tower, projector.

Names and keys are Ollama's (convert_mllama.go), so the file runs here and in Ollama alike:
the text model as "llama" with cross-attention layers (`blk.N.cross_attn_*`), the vision tower
as `v.*`, the projector as `mm.0`. Like Ollama, the vision tower's gates are stored already
passed through tanh (the position embedding's as 1 - tanh), so the model multiplies by them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pollama.models.convert import ATTENTION_LAYER_NAMES, ConvertError, HFConfig
from pollama.models.llama.convert import LAYER_NAMES as LLAMA_LAYER_NAMES
from pollama.models.llama.convert import LlamaConverter, interleave_halves

# HF name inside `language_model.model.layers.N.` -> GGUF name inside `blk.N.`.
TEXT_LAYER_NAMES = {
    **LLAMA_LAYER_NAMES,
    "cross_attn.q_proj": "cross_attn_q_proj",
    "cross_attn.k_proj": "cross_attn_k_proj",
    "cross_attn.v_proj": "cross_attn_v_proj",
    "cross_attn.o_proj": "cross_attn_o_proj",
    "cross_attn.q_norm": "cross_attn_q_norm",
    "cross_attn.k_norm": "cross_attn_k_norm",
}
TEXT_LAYER_GATES = ("cross_attn_attn_gate", "cross_attn_mlp_gate")  # [1] parameters, no .weight

# HF name inside `vision_model.(global_)transformer.layers.N.` -> GGUF name inside `v.(global.)blk.N.`.
VISION_LAYER_NAMES = {
    **ATTENTION_LAYER_NAMES,
    "post_attention_layernorm": "ffn_norm",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
    "gate_attn": "attn_gate",
    "gate_ffn": "ffn_gate",
}

TOP_NAMES = {
    "language_model.model.embed_tokens.weight": "token_embd.weight",
    "language_model.model.norm.weight": "output_norm.weight",
    "language_model.lm_head.weight": "output.weight",
    "multi_modal_projector.weight": "mm.0.weight",
    "multi_modal_projector.bias": "mm.0.bias",
    "vision_model.patch_embedding.weight": "v.patch_embd.weight",
    "vision_model.class_embedding": "v.class_embd",
    "vision_model.gated_positional_embedding.embedding": "v.position_embd.weight",
    "vision_model.gated_positional_embedding.gate": "v.position_embd.gate",
    "vision_model.gated_positional_embedding.tile_embedding.weight": "v.tile_position_embd.weight",
    "vision_model.pre_tile_positional_embedding.embedding.weight": "v.pre_tile_position_embd.weight",
    "vision_model.pre_tile_positional_embedding.gate": "v.pre_tile_position_embd.gate",
    "vision_model.post_tile_positional_embedding.embedding.weight": "v.post_tile_position_embd.weight",
    "vision_model.post_tile_positional_embedding.gate": "v.post_tile_position_embd.gate",
    "vision_model.layernorm_pre.weight": "v.pre_ln.weight",
    "vision_model.layernorm_pre.bias": "v.pre_ln.bias",
    "vision_model.layernorm_post.weight": "v.post_ln.weight",
    "vision_model.layernorm_post.bias": "v.post_ln.bias",
}

# One HF gate drives both position embeddings: (1 - tanh) the patch positions, tanh the tiles'.
SHARED_GATE = ("vision_model.gated_positional_embedding.gate", ("v.position_embd.gate", "v.tile_position_embd.gate"))


class MllamaConverter(LlamaConverter):
    arch = "mllama"
    architectures = ("MllamaForConditionalGeneration",)

    def __init__(self, cfg: HFConfig):
        text, vision = cfg.data.get("text_config"), cfg.data.get("vision_config")
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise ConvertError("config.json lacks text_config or vision_config")
        # The text model's keys read as a llama config's; the vocabulary covers every embedding
        # row (vocab + 8), so <|image|> (the first id past the text vocabulary) stays in it.
        merged = {**text, "vocab_size": text.get("vocab_size", 128256) + 8}
        super().__init__(HFConfig(merged))
        self.text_vocab = text.get("vocab_size", 128256)
        self.vision = HFConfig(vision)

    def metadata(self) -> dict[str, Any]:
        md = super().metadata()  # llama's keys: sizes, heads, eps, rope
        md["vocab_size"] = self.text_vocab
        v = self.vision
        layers = self.cfg.require("num_hidden_layers")
        cross = [int(i) for i in self.cfg.get("cross_attention_layers", [])]
        if any(not 0 <= i < layers for i in cross):
            raise ConvertError(f"config.json cross_attention_layers {cross} outside the {layers} layers")
        hidden, heads = v.get("hidden_size", 1280), v.get("attention_heads", 16)
        indices = [int(i) for i in v.get("intermediate_layers_indices", [3, 7, 15, 23, 30])]
        if v.get("vision_output_dim", hidden * (len(indices) + 1)) != hidden * (len(indices) + 1):
            raise ConvertError("config.json vision_output_dim is not hidden_size x (1 + intermediate layers)")
        if v.get("hidden_act", "gelu") != "gelu":
            raise ConvertError(f"config.json vision hidden_act={v.get('hidden_act')!r}: mllama computes gelu")
        md.update({
            "attention.cross_attention_layers": cross,
            "vision.block_count": v.get("num_hidden_layers", 32),
            "vision.global.block_count": v.get("num_global_layers", 8),
            "vision.intermediate_layers_indices": indices,
            "vision.embedding_length": hidden,
            "vision.feed_forward_length": v.get("intermediate_size", 5120),
            "vision.attention.head_count": heads,
            "vision.attention.layer_norm_epsilon": float(v.get("norm_eps", 1e-5)),
            "vision.image_size": v.get("image_size", 560),
            "vision.patch_size": v.get("patch_size", 14),
            "vision.max_num_tiles": v.get("max_num_tiles", 4),
            "vision.num_channels": v.get("num_channels", 3),
        })
        return md

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith("rotary_emb.inv_freq")

    def gguf_names(self, hf_name: str) -> list[str]:
        """Every GGUF tensor made from one HF tensor (the shared position gate makes two)."""
        if hf_name == SHARED_GATE[0]:
            return list(SHARED_GATE[1])
        return [self.gguf_name(hf_name)]

    def gguf_name(self, hf_name: str) -> str:
        if hf_name in TOP_NAMES:
            return TOP_NAMES[hf_name]
        m = re.fullmatch(r"language_model\.model\.layers\.(\d+)\.(.+)", hf_name)
        if m:
            rest = m.group(2)
            if rest in TEXT_LAYER_GATES:
                return f"blk.{m.group(1)}.{rest}"
            stem, _, suffix = rest.rpartition(".")
            if stem in TEXT_LAYER_NAMES and suffix in ("weight", "bias"):
                return f"blk.{m.group(1)}.{TEXT_LAYER_NAMES[stem]}.{suffix}"
        m = re.fullmatch(r"vision_model\.(global_)?transformer\.layers\.(\d+)\.(.+)", hf_name)
        if m:
            prefix = f"v.{'global.' if m.group(1) else ''}blk.{m.group(2)}"
            rest = m.group(3)
            if rest in ("gate_attn", "gate_ffn"):
                return f"{prefix}.{VISION_LAYER_NAMES[rest]}"
            stem, _, suffix = rest.rpartition(".")
            if stem in VISION_LAYER_NAMES and suffix in ("weight", "bias"):
                return f"{prefix}.{VISION_LAYER_NAMES[stem]}.{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no place in a mllama GGUF")

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        if name.startswith("v."):
            if name == "v.position_embd.gate":
                return (1.0 - np.tanh(data)).astype(np.float32)
            if name.endswith(("_position_embd.gate", ".attn_gate", ".ffn_gate")):
                return np.tanh(data).astype(np.float32)
            if name.endswith((".attn_q.weight", ".attn_k.weight")):
                # No RoPE in the vision tower, so this changes nothing computed: Ollama reorders
                # each head's rows as for Llama's text, and files should be byte-alike.
                return interleave_halves(data, self.vision.get("attention_heads", 16))
            return data
        if name.startswith("mm."):
            return data
        return super().transform(name, data)  # text: Llama's Q/K row order for normal RoPE


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (MllamaConverter,)
