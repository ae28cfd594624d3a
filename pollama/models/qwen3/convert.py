"""HF Qwen3ForCausalLM -> GGUF "qwen3", Qwen3MoeForCausalLM -> GGUF "qwen3moe" (llama.cpp's keys
and tensor names, so either file runs in llama.cpp too)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pollama.models.checkpoint import StackedExperts
from pollama.models.convert import QK_NORM_LAYER_NAMES, ConvertError, ModelConverter
from pollama.models.llama.convert import LAYER_NAMES

log = logging.getLogger(__name__)

QWEN3_LAYER_NAMES = {**LAYER_NAMES, **QK_NORM_LAYER_NAMES}

QWEN3MOE_LAYER_NAMES = {
    **QWEN3_LAYER_NAMES,
    "mlp.gate": "ffn_gate_inp",  # the router
    "mlp.experts.gate_proj": "ffn_gate_exps",  # stacked [n_experts, ff, dim] (StackedExperts)
    "mlp.experts.up_proj": "ffn_up_exps",
    "mlp.experts.down_proj": "ffn_down_exps",
}


class Qwen3Converter(ModelConverter):
    # NeoX-style RoPE as HF computes it: no Q/K reordering (unlike llama).
    arch = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    layer_names = QWEN3_LAYER_NAMES

    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        self.check_activation("hidden_act", ("silu",), "silu")
        if c.get("use_sliding_window", False):
            log.warning("use_sliding_window is not kept: attention will see the whole context")
        if c.get("attention_bias", False):
            raise ConvertError("config.json attention_bias=true: qwen3 models have no Q/K/V biases")
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=40960, rope=c.rope(default_theta=1000000.0))
        # Qwen3's head size is its own (128 with a hidden size of 1024, 16 heads): always written.
        md["attention.key_length"] = md["attention.value_length"] = self.head_dim()
        return md


class Qwen3MoeConverter(Qwen3Converter):
    arch = "qwen3moe"
    architectures = ("Qwen3MoeForCausalLM",)
    layer_names = QWEN3MOE_LAYER_NAMES

    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        md = super().metadata()
        experts, used = self.n_experts(), c.require("num_experts_per_tok")
        if not 0 < used <= experts:
            raise ConvertError(f"config.json num_experts_per_tok={used} of num_experts={experts}")
        dense = self.dense_layers()
        if dense:
            # llama.cpp's qwen3moe has routed experts in every layer; pollama reads each layer's own.
            log.warning("layers %s have a dense MLP (mlp_only_layers / decoder_sparse_step): llama.cpp "
                        "cannot load such a file", dense)
        md.update({
            "expert_count": experts,
            "expert_used_count": used,
            "expert_feed_forward_length": c.require("moe_intermediate_size"),
            # Read by Ollama's qwen3moe (default true); llama.cpp always renormalises.
            "norm_top_k_prob": bool(c.get("norm_topk_prob", False)),
        })
        return md

    def n_experts(self) -> int:
        # Published configs say num_experts; transformers 5 saves it as num_local_experts.
        return self.cfg.get("num_experts") or self.cfg.require("num_local_experts")

    def dense_layers(self) -> list[int]:
        """Layers with an MLP instead of experts, as transformers decides them."""
        c = self.cfg
        step, only = c.get("decoder_sparse_step", 1), set(c.get("mlp_only_layers", []))
        return [i for i in range(c.require("num_hidden_layers")) if i in only or step <= 0 or (i + 1) % step]

    def source(self, weights: Mapping[str, Any]) -> Mapping[str, Any]:
        """Per-expert matrices stacked into one tensor per projection and layer."""
        return StackedExperts(weights, self.n_experts())


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Qwen3Converter, Qwen3MoeConverter)
