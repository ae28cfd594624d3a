"""HF Gemma3ForCausalLM (Gemma 3 text: 270M, 1B) and Gemma3ForConditionalGeneration (4B, 12B, 27B:
text + SigLIP vision) -> GGUF "gemma3"."""

from __future__ import annotations

import math
import re

import numpy as np

from pollama.models.convert import (
    LLAMA_LAYER_NAMES, QK_NORM_LAYER_NAMES, ConvertError, HFConfig, ModelConverter, rope_scaling_metadata,
)

# Llama's names with Q/K norms, and a norm both before and after attention and the MLP.
LAYER_NAMES = {
    **LLAMA_LAYER_NAMES,
    **QK_NORM_LAYER_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


class Gemma3Converter(ModelConverter):
    arch = "gemma3"
    architectures = ("Gemma3ForCausalLM",)
    layer_names = LAYER_NAMES

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
        if c.get("attn_logit_softcapping") is not None:
            raise ConvertError("config.json attn_logit_softcapping is set; Gemma 3 has none")
        n_layers = c.require("num_hidden_layers")
        hidden, heads = c.require("hidden_size"), c.get("num_attention_heads", 8)
        head_dim = c.get("head_dim", 256)
        # GGUF has no key for the query scale: readers derive it from the layer count (27B, 62
        # layers, uses hidden/heads; the others head_dim). A config that differs cannot be stored.
        expected = hidden // heads if n_layers == 62 else head_dim
        if c.get("query_pre_attn_scalar", expected) != expected:
            raise ConvertError(
                f"config.json query_pre_attn_scalar={c.get('query_pre_attn_scalar')} cannot be stored in GGUF "
                f"(readers use {expected} for {n_layers} layers)"
            )

        # Which layers attend locally: transformers 5 lists them, older configs give a period.
        layer_types = c.get("layer_types")
        if layer_types is None:
            period = c.get("sliding_window_pattern", 6)
            layer_types = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers:
            raise ConvertError(f"config.json layer_types has {len(layer_types)} entries for {n_layers} layers")

        global_rope = c.rope("full_attention", default_theta=1_000_000.0)
        if isinstance((c.get("rope_parameters") or {}).get("sliding_attention"), dict):
            local_theta = c.rope("sliding_attention")["rope_theta"]
        else:
            local_theta = c.get("rope_local_base_freq", 10000.0)
        md = {
            "vocab_size": c.require("vocab_size"),
            "context_length": c.get("max_position_embeddings", 131072),
            "embedding_length": hidden,
            "block_count": n_layers,
            "feed_forward_length": c.require("intermediate_size"),
            "attention.head_count": heads,
            "attention.head_count_kv": c.get("num_key_value_heads", 4),
            "attention.key_length": head_dim,
            "attention.value_length": head_dim,
            "attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", 1e-6)),
            "attention.sliding_window": c.get("sliding_window", 4096),
            "attention.sliding_window_pattern": [t == "sliding_attention" for t in layer_types],
            "rope.freq_base": float(global_rope["rope_theta"]),
            "rope.local.freq_base": float(local_theta),
            # Only global layers are scaled. The factor is written even when it is 1: readers
            # (Ollama's and ours) take a file without it for one of Ollama's, scaled by size.
            "rope.scaling.factor": 1.0,
            **rope_scaling_metadata(global_rope),
        }
        if c.get("final_logit_softcapping"):
            md["final_logit_softcapping"] = float(c.get("final_logit_softcapping"))
        return md

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # Gemma's RMSNorm scales by (1 + weight); GGUF stores the sum.
        return data + 1.0 if name.endswith("norm.weight") else data


# SigLIP's names inside a vision layer, and their GGUF names (as Ollama's convert_gemma3.go).
VISION_LAYER_NAMES = {
    "layer_norm1": "layer_norm1",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_output",
    "layer_norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
VISION_TOP_NAMES = {
    "embeddings.patch_embedding": "v.patch_embedding",
    "embeddings.position_embedding": "v.position_embedding",
    "post_layernorm": "v.post_layernorm",
}
PROJECTOR_NAMES = {
    "multi_modal_projector.mm_soft_emb_norm.weight": "mm.mm_soft_emb_norm.weight",
    # HF keeps it [vision_dim, text_dim] and computes x @ W; so does the GGUF (Ollama's layout,
    # which Ollama's and our model transpose when they apply it).
    "multi_modal_projector.mm_input_projection_weight": "mm.mm_input_projection.weight",
}
# Text configs of the hub's Gemma 3 VLMs leave these at Gemma3TextConfig's defaults.
TEXT_DEFAULTS = {"vocab_size": 262208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256}


class Gemma3VisionConverter(Gemma3Converter):
    """HF Gemma3ForConditionalGeneration (Gemma 3 4B/12B/27B: text + SigLIP) -> one GGUF "gemma3":
    the text model as Gemma3Converter writes it, the vision tower as `v.*`, the projector as `mm.*`."""

    architectures = ("Gemma3ForConditionalGeneration",)

    def __init__(self, cfg: HFConfig):
        top = {k: v for k, v in cfg.data.items() if k not in ("text_config", "vision_config")}
        text = cfg.data.get("text_config") or {}
        # The text converter reads the text config; top-level keys fill what it lacks.
        super().__init__(HFConfig({**TEXT_DEFAULTS, **top, **text}))
        self.vision = HFConfig(cfg.data.get("vision_config") or {})
        self.top = HFConfig(top)

    def metadata(self) -> dict:
        md = super().metadata()
        v, top = self.vision, self.top
        if v.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise ConvertError(f"config.json vision_config.model_type={v.get('model_type')!r}: Gemma 3 has SigLIP")
        if v.get("vision_use_head", False):
            raise ConvertError("config.json vision_config.vision_use_head is set; Gemma 3 uses the patch states")
        act = v.get("hidden_act", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConvertError(f"config.json vision_config.hidden_act={act!r}: Gemma 3's SigLIP computes gelu_pytorch_tanh")
        image_size, patch_size = v.get("image_size", 224), v.get("patch_size", 16)
        tokens = top.get("mm_tokens_per_image", 256)
        side, per_side = image_size // patch_size, math.isqrt(tokens)
        if image_size % patch_size or per_side * per_side != tokens or side % per_side:
            raise ConvertError(
                f"config.json: {image_size // patch_size}x{image_size // patch_size} patches cannot be pooled "
                f"to mm_tokens_per_image={tokens} (a square whose side divides the patch grid's)")
        md.update({
            "vision.block_count": v.require("num_hidden_layers"),
            "vision.embedding_length": v.require("hidden_size"),
            "vision.feed_forward_length": v.require("intermediate_size"),
            "vision.image_size": image_size,
            "vision.patch_size": patch_size,
            "vision.num_channels": v.get("num_channels", 3),
            "vision.attention.head_count": v.require("num_attention_heads"),
            "vision.attention.layer_norm_epsilon": float(v.get("layer_norm_eps", 1e-6)),
            "mm.tokens_per_image": tokens,
        })
        return md

    def skip(self, hf_name: str) -> bool:
        return super().skip(hf_name.replace("language_model.", "", 1))

    def gguf_name(self, hf_name: str) -> str:
        name = hf_name.removeprefix("model.")  # transformers 5's in-memory names: model.language_model.*
        if name in PROJECTOR_NAMES:
            return PROJECTOR_NAMES[name]
        if name.startswith("language_model."):
            rest = name.removeprefix("language_model.")
            return super().gguf_name(rest if rest.startswith(("model.", "lm_head.")) else f"model.{rest}")
        if name.startswith("vision_tower."):
            # Hub checkpoints nest the tower in vision_model; transformers 5 saves it flat.
            rest = name.removeprefix("vision_tower.").removeprefix("vision_model.")
            stem, _, suffix = rest.rpartition(".")
            if stem in VISION_TOP_NAMES:
                return f"{VISION_TOP_NAMES[stem]}.{suffix}"
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", stem)
            if m and m.group(2) in VISION_LAYER_NAMES and suffix in ("weight", "bias"):
                return f"v.blk.{m.group(1)}.{VISION_LAYER_NAMES[m.group(2)]}.{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no place in a {self.arch} GGUF")

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # The +1 of Gemma's RMSNorm applies to the text norms and the projector's; SigLIP's
        # LayerNorms keep their weights.
        return data if name.startswith("v.") else super().transform(name, data)


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Gemma3Converter, Gemma3VisionConverter)
