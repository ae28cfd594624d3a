"""Qwen3 (Qwen Team 2025): Qwen2's decoder without Q/K/V biases, each attention head's queries
and keys RMS-normalised before RoPE (QK-norm); Qwen3-MoE swaps the MLP of its sparse layers for
routed experts: softmax over the experts, the top k kept (their weights renormalised to sum to 1
when norm_top_k_prob), each a SwiGLU MLP, no shared expert."""

from __future__ import annotations

import functools

from pollama.ml.base import RopeMode, Tensor
from pollama.models.base import Config, register
from pollama.models.llama.model import Block, Llama
from pollama.nn import RMSNorm, RoutedExperts, Weights, load_weights, softmax_then_top_k


class Qwen3Block(Block):
    """Llama's layer with QK-norm; in a sparse layer, routed experts in place of the MLP."""

    attn_q_norm: RMSNorm  # [head_dim], shared by every head
    attn_k_norm: RMSNorm

    experts = None  # a sparse layer's RoutedExperts, set by Qwen3Moe.load_block

    def qk_norm(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn_q_norm(q), self.attn_k_norm(k)

    def feed_forward(self, h: Tensor) -> Tensor:
        return self.experts(h) if self.experts is not None else super().feed_forward(h)


@register("qwen3")
class Qwen3(Llama):
    rope_mode = RopeMode.NEOX

    def load_block(self, cfg: Config, w: Weights, i: int, eps: float) -> Qwen3Block:
        return Qwen3Block.load(w, f"blk.{i}", eps=eps)


@register("qwen3moe")
class Qwen3Moe(Qwen3):
    routed_experts = True

    def load_block(self, cfg: Config, w: Weights, i: int, eps: float) -> Qwen3Block:
        prefix = f"blk.{i}"
        if f"{prefix}.ffn_gate_inp.weight" not in w:  # a dense layer (transformers' mlp_only_layers)
            return super().load_block(cfg, w, i, eps)
        block = Qwen3Block.__new__(Qwen3Block)
        route = functools.partial(softmax_then_top_k, normalize=cfg.bool("norm_top_k_prob", True))
        block.experts = RoutedExperts.load(w, prefix, n_used=cfg.int("expert_used_count"), route=route)
        block.ffn_gate = block.ffn_up = block.ffn_down = None  # the experts' own, not a dense MLP
        load_weights(block, w, prefix, eps=eps)
        return block
