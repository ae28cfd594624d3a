"""HF Qwen2ForCausalLM (Qwen2, Qwen2.5, Qwen2.5-Coder) -> GGUF "qwen2"."""

from __future__ import annotations

import logging

from pollama.models.convert import ModelConverter
from pollama.models.llama.convert import LAYER_NAMES

log = logging.getLogger(__name__)


class Qwen2Converter(ModelConverter):
    # Llama's layout with Q/K/V biases; no Q/K reordering, as qwen2 uses NeoX-style RoPE like HF.
    arch = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    layer_names = LAYER_NAMES

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_act", ("silu",), "silu")
        if c.get("use_sliding_window", False):
            log.warning("use_sliding_window is not kept: attention will see the whole context")
        return self.decoder_metadata(default_eps=1e-6, default_ctx=32768, rope=c.rope())


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Qwen2Converter,)
