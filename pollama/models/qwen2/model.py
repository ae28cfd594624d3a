"""Qwen2 (Yang et al. 2024): Llama's decoder with biases on Q/K/V and NeoX-style RoPE."""

from __future__ import annotations

from pollama.ml.base import RopeMode
from pollama.models.base import register
from pollama.models.llama.model import Llama


@register("qwen2")
class Qwen2(Llama):
    # Q/K/V biases are loaded by Linear.load when the file has them; only RoPE differs.
    rope_mode = RopeMode.NEOX
