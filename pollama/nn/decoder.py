"""What most decoder layers declare alike, declared once: a model's Block subclasses it and
adds what its own layer has (nn.Module reads inherited annotations as weights too)."""

from __future__ import annotations

from pollama.ml.base import Tensor
from pollama.nn.loader import Module
from pollama.nn.modules import Linear, RMSNorm


class PreNormAttention(Module):
    """The attention half of a pre-norm decoder layer, under GGUF's names in `blk.N.`: the
    norm before attention, then the query, key, value and output projections (Llama's
    layout, kept by Qwen2/3, Mistral and gpt-oss)."""

    attn_norm: RMSNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear

    attn_sinks = None  # no per-head sink logits (a layer that has them declares attn_sinks: Tensor)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values [t, width] of the normed x (a fused projection overrides this)."""
        return self.attn_q(h), self.attn_k(h), self.attn_v(h)

    def qk_norm(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Q and K [t, heads, head_dim] before RoPE: as they are (Qwen3 normalises each head here)."""
        return q, k
