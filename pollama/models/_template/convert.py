"""HF MyModelForCausalLM -> GGUF "mymodel".

TEMPLATE: set `arch` (general.architecture, as model.py's ARCH) and `architectures` (the
config.json class names this converts), map the tensor names, write the keys model.py reads.
CONVERTERS at the end is what `pollama create` finds in this folder for those config.json
classes: nothing else lists it.
"""

from __future__ import annotations

import numpy as np

from pollama.models.convert import ATTENTION_LAYER_NAMES, ModelConverter, rope_scaling_metadata

# HF name inside `model.layers.N.` (without .weight/.bias) -> GGUF name inside `blk.N.`.
# `pollama tensors FOLDER` lists the HF names; outside the layers, ModelConverter.top_names
# maps model.embed_tokens, model.norm and lm_head already.
LAYER_NAMES = {
    **ATTENTION_LAYER_NAMES,  # input_layernorm and self_attn.{q,k,v,o}_proj
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


class MyModelConverter(ModelConverter):
    arch = "mymodel"
    architectures = ("MyModelForCausalLM",)
    layer_names = LAYER_NAMES

    def metadata(self) -> dict:
        """`mymodel.*` keys (without the prefix): every value model.py reads."""
        c = self.cfg
        # Refuse what model.py does not compute, rather than convert it into a wrong model.
        self.check_activation("hidden_act", ("silu",), "silu")
        rope = c.rope()
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=4096)
        md["rope.freq_base"] = float(rope["rope_theta"])
        md["rope.dimension_count"] = self.head_dim()
        md.update(rope_scaling_metadata(rope))
        return md

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        # Change a tensor's values for its GGUF layout (Gemma adds 1 to its norms; Llama
        # permutes q/k rows for NORMAL RoPE). This template's layout is HF's own.
        return data


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (MyModelConverter,)
