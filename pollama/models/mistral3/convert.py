"""HF Mistral3ForConditionalGeneration (Mistral Small 3.1/3.2: Pixtral vision) -> GGUF "mistral3".

One file holds the text decoder (Llama's tensors and layout, under the "mistral3" keys), the
Pixtral vision tower (`v.*`) and the projector (`mm.*`), with the names and keys Ollama's
converter writes, so the file runs in Ollama too. As there, the text Q/K rows are permuted for
adjacent-pair RoPE (as Llama's) and the vision Q/K are not (the tower rotates halves).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pollama.models.convert import ConvertError, HFConfig, ModelConverter
from pollama.models.llama.convert import LAYER_NAMES as TEXT_LAYER_NAMES
from pollama.models.llama.convert import LlamaConverter

VISION_LAYER_NAMES = {
    "attention_norm": "attn_norm",
    "attention.q_proj": "attn_q",
    "attention.k_proj": "attn_k",
    "attention.v_proj": "attn_v",
    "attention.o_proj": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.gate_proj": "ffn_gate",
    "feed_forward.up_proj": "ffn_up",
    "feed_forward.down_proj": "ffn_down",
}

TOP_NAMES = {
    "language_model.model.embed_tokens": "token_embd",
    "language_model.model.norm": "output_norm",
    "language_model.lm_head": "output",
    "vision_tower.patch_conv": "v.patch_conv",
    "vision_tower.ln_pre": "v.encoder_norm",
    "multi_modal_projector.norm": "mm.norm",
    "multi_modal_projector.patch_merger.merging_layer": "mm.patch_merger.merging_layer",
    "multi_modal_projector.linear_1": "mm.linear_1",
    "multi_modal_projector.linear_2": "mm.linear_2",
}

# Pixtral's own norms are built with eps 1e-5 whatever the config says.
VISION_EPS = 1e-5


class Mistral3Converter(ModelConverter):
    arch = "mistral3"
    architectures = ("Mistral3ForConditionalGeneration",)
    top_names = TOP_NAMES

    def __init__(self, cfg: HFConfig):
        text, vision = cfg.require("text_config"), cfg.require("vision_config")
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise ConvertError("config.json text_config and vision_config must be objects")
        # The tokenizer's vocabulary size is the text model's.
        super().__init__(HFConfig({**cfg.data, "vocab_size": text.get("vocab_size")}))
        self.text = LlamaConverter(HFConfig(text))  # the decoder is Llama's, keys and all
        self.vision = HFConfig(vision)

    def metadata(self) -> dict[str, Any]:
        c, v = self.cfg, self.vision
        md = self.text.metadata()
        for key in ("rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow"):  # llama.cpp's names
            md.pop(key, None)
        md.update(self.yarn_metadata())  # Ollama's

        if v.get("hidden_act", "gelu") != "silu":
            raise ConvertError(f"config.json vision_config hidden_act={v.get('hidden_act')!r}: Pixtral's MLP computes silu")
        if c.get("projector_hidden_act", "gelu") != "gelu":
            raise ConvertError(f"config.json projector_hidden_act={c.get('projector_hidden_act')!r}: mistral3 computes gelu")
        layers = v.require("num_hidden_layers")
        feature_layer = c.get("vision_feature_layer", -1)
        if feature_layer not in (-1, layers):
            raise ConvertError(f"config.json vision_feature_layer={feature_layer!r}: only the last layer (-1) is supported")
        hidden, heads = v.require("hidden_size"), v.require("num_attention_heads")
        head_dim = v.get("head_dim") or hidden // heads
        if head_dim * heads != hidden or head_dim % 4:
            # Pixtral's attention splits hidden_size into heads; its RoPE uses head_dim quarters.
            raise ConvertError(
                f"config.json vision head_dim {head_dim} x {heads} heads must be hidden_size {hidden}, "
                "and head_dim a multiple of 4")
        image_size = v.get("image_size", 1540)
        vision_rope = v.get("rope_parameters") or {}
        md.update({
            "vision.block_count": layers,
            "vision.embedding_length": hidden,
            "vision.feed_forward_length": v.require("intermediate_size"),
            "vision.attention.head_count": heads,
            "vision.attention.key_length": head_dim,
            "vision.attention.layer_norm_epsilon": VISION_EPS,
            "vision.image_size": image_size,
            "vision.longest_edge": image_size,  # the processor resizes to the size the tower was built for
            "vision.patch_size": v.get("patch_size", 14),
            "vision.num_channels": v.get("num_channels", 3),
            "vision.rope.freq_base": float(vision_rope.get("rope_theta") or v.get("rope_theta", 10000.0)),
            "image_token_index": c.get("image_token_index", 10),
            "spatial_merge_size": c.get("spatial_merge_size", 2),
            "mm.projector_bias": bool(c.get("multimodal_projector_bias", False)),
            "mm.projector_hidden_act": c.get("projector_hidden_act", "gelu"),
        })
        return md

    def yarn_metadata(self) -> dict[str, Any]:
        """YaRN (Ministral 3) under Ollama's mistral3 keys, with its magnitude and Llama 4's
        attention temperature (ministral3 text models only)."""
        text = self.text.cfg
        rope = text.rope()
        kind = rope["rope_type"]
        beta = rope.get("llama_4_scaling_beta") if text.get("model_type") == "ministral3" else None
        if kind not in ("default", "linear", "yarn"):
            raise ConvertError(f"config.json text rope scaling {kind!r} is not supported for mistral3 (linear, yarn)")
        if kind != "yarn":
            if beta is not None:
                raise ConvertError("config.json llama_4_scaling_beta without yarn rope scaling is not supported")
            return {}
        if rope.get("attention_factor") is not None or rope.get("truncate", True) is not True:
            raise ConvertError("config.json yarn attention_factor and truncate are not supported for mistral3")
        md: dict[str, Any] = {
            "rope.scaling.beta_fast": float(rope.get("beta_fast") or 32.0),
            "rope.scaling.beta_slow": float(rope.get("beta_slow") or 1.0),
        }
        for hf, key in (("mscale", "rope.scaling.mscale"), ("mscale_all_dim", "rope.scaling.mscale_all_dim")):
            if rope.get(hf) is not None:
                md[key] = float(rope[hf])
        if beta is not None:
            if not rope.get("original_max_position_embeddings"):
                raise ConvertError("config.json llama_4_scaling_beta needs original_max_position_embeddings")
            md["rope.scaling_beta"] = float(beta)
        return md

    def skip(self, hf_name: str) -> bool:
        if hf_name.endswith("rotary_emb.inv_freq"):
            return True
        return hf_name == "language_model.lm_head.weight" and bool(self.cfg.get("tie_word_embeddings", False))

    def layer_stacks(self) -> tuple[tuple[str, dict[str, str], str], ...]:
        return (("language_model.model.layers", TEXT_LAYER_NAMES, "blk"),
                ("vision_tower.transformer.layers", VISION_LAYER_NAMES, "v.blk"))

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # Text Q/K as Llama's (adjacent-pair RoPE); the vision tower keeps HF's rows.
        return data if name.startswith(("v.", "mm.")) else self.text.transform(name, data)

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        return self.text.extra_tensors()


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Mistral3Converter,)
