"""HF Gemma3ForCausalLM (Gemma 3 text: 270M, 1B) -> GGUF "gemma3"."""

from __future__ import annotations

import numpy as np

from pollama.create.convert import ConvertError, ModelConverter, rope_scaling_metadata

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
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
            **rope_scaling_metadata(global_rope),  # (only global layers are scaled)
        }
        if c.get("final_logit_softcapping"):
            md["final_logit_softcapping"] = float(c.get("final_logit_softcapping"))
        return md

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # Gemma's RMSNorm scales by (1 + weight); GGUF stores the sum.
        return data + 1.0 if name.endswith("norm.weight") else data
