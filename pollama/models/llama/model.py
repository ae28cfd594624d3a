"""Llama (Touvron et al. 2023): pre-norm decoder, RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import math
from typing import Annotated, Optional

from pollama.ml.base import Context, RopeMode, Tensor
from pollama.models.base import Config, TextModel, register
from pollama.errors import ModelError
from pollama.nn import Batch, Linear, Module, RMSNorm, RopeScaling, Weights, attention, make_rope


def read_rope_scaling(cfg: Config) -> RopeScaling:
    """`rope.scaling.*` keys (linear or YaRN context extension)."""
    # llama.cpp's converter writes yarn_beta_*, Ollama's beta_*: read either.
    return RopeScaling(
        kind=cfg.str("rope.scaling.type", "none"),
        factor=cfg.float("rope.scaling.factor", 1.0),
        original_context=cfg.int("rope.scaling.original_context_length", 0),
        beta_fast=cfg.float("rope.scaling.yarn_beta_fast", cfg.float("rope.scaling.beta_fast", 32.0)),
        beta_slow=cfg.float("rope.scaling.yarn_beta_slow", cfg.float("rope.scaling.beta_slow", 1.0)),
        attn_factor=cfg.float("rope.scaling.attn_factor", 1.0),
    )


class Block(Module):
    """One decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    attn_norm: RMSNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    ffn_norm: RMSNorm
    ffn_gate: Linear
    ffn_up: Linear
    ffn_down: Linear

    def qk_norm(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Q and K [t, heads, head_dim] before RoPE: as they are (Qwen3 normalises each head here)."""
        return q, k

    def feed_forward(self, h: Tensor) -> Tensor:
        """The MLP on the normed residual: SwiGLU (a sparse layer routes to experts instead)."""
        return self.ffn_down(self.ffn_gate(h).swiglu(self.ffn_up(h)))


@register("llama")
class Llama(TextModel):
    rope_mode = RopeMode.NORMAL  # GGUF stores Llama's Q/K permuted for adjacent-pair RoPE
    routed_experts = False  # whether layers may route to experts (expert_count > 0; see load_block)

    # (and TextModel's token_embd and output)
    blk: list[Block]
    output_norm: RMSNorm
    rope_freqs: Annotated[Optional[Tensor], "rope_freqs.weight"]  # Llama 3.1 per-frequency factors

    def __init__(self, cfg: Config, w: Weights):
        self.read_dims(cfg)
        self.n_ctx_train = cfg.int("context_length", 4096)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-5)
        if cfg.int("expert_count", 0) and not self.routed_experts:
            raise ModelError(f"mixture-of-experts {self.arch} models are not supported")
        self.rope = make_rope(
            cfg.int("rope.dimension_count", self.head_dim),
            cfg.float("rope.freq_base", 10000.0),
            self.rope_mode,
            read_rope_scaling(cfg),
        )
        self.blk = [self.load_block(cfg, w, i, eps) for i in range(self.n_layers)]
        self.load_weights(w, eps=eps)

    def load_block(self, cfg: Config, w: Weights, i: int, eps: float) -> Block:
        """Layer i, with its weights under `blk.i.`."""
        return Block.load(w, f"blk.{i}", eps=eps)

    def query_temperature(self, ctx: Context, positions: Tensor) -> Tensor | None:
        """A factor [t, 1, 1] on each position's queries after RoPE, or None (Llama has none)."""
        return None

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        tokens, positions, outputs = batch.bind(ctx)
        x = batch.embed(ctx, self.token_embd(tokens))  # [t, dim]; image rows in place (a vision subclass's)
        ctx.record("token_embd", x)
        # M-RoPE models (Qwen2-VL) turn by the batch's (t, h, w) positions instead.
        rotary = batch.multi_positions(ctx) if self.uses_rope_positions else positions
        temperature = self.query_temperature(ctx, positions)
        for i, layer in enumerate(self.blk):
            x = decoder_layer(ctx, self, layer, i, x, rotary, cache, outputs, temperature)
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)
        ctx.record("logits", logits)
        return logits


def decoder_layer(ctx: Context, model: TextModel, layer: Block, i: int, x: Tensor, positions: Tensor, cache,
                  outputs: Tensor, temperature: Tensor | None = None) -> Tensor:
    """One Llama layer on x [t, dim] (model: the sizes, RoPE and frequency factors); the last
    layer keeps only the rows of `outputs`."""
    t = x.shape[0]
    h = layer.attn_norm(x)
    q = layer.attn_q(h).reshape(t, model.n_heads, model.head_dim)
    k = layer.attn_k(h).reshape(t, model.n_kv_heads, model.head_dim)
    v = layer.attn_v(h).reshape(t, model.n_kv_heads, model.v_head_dim)
    q, k = layer.qk_norm(q, k)
    q = q.rope(positions, model.rope, model.rope_freqs)
    if temperature is not None:
        q = q * temperature
    k = k.rope(positions, model.rope, model.rope_freqs)
    a = layer.attn_output(attention(ctx, q, k, v, cache, i, 1.0 / math.sqrt(model.head_dim)))
    if i == model.n_layers - 1:  # from here on only the rows whose logits are wanted
        a, x = a.rows(outputs), x.rows(outputs)
    ctx.record(f"blk.{i}.attn_out", a)
    x = x + a

    m = layer.feed_forward(layer.ffn_norm(x))
    ctx.record(f"blk.{i}.ffn_out", m)
    x = x + m
    ctx.record(f"blk.{i}.out", x)
    return x
