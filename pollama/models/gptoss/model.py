"""gpt-oss (OpenAI 2025): pre-norm decoder whose every feed-forward is a mixture of experts, with
attention sinks, alternating sliding-window and full attention, YaRN RoPE and biases everywhere.

- Attention: grouped-query, Q/K/V/O with biases, NeoX RoPE with YaRN, and a learned sink logit
  per head that joins the softmax as a key with no value (a head may attend to nothing).
  Even layers see a sliding window of recent tokens (128), odd layers the whole context.
- Experts: the router (with bias) scores every expert; each token takes its k best and weights
  them by a softmax over those k scores. An expert is gate/up/down with biases and OpenAI's
  clamped SwiGLU: g * sigmoid(1.702 g) * (u + 1), g <= 7, -7 <= u <= 7. Its weights are MXFP4.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

from pollama.errors import ModelError
from pollama.kvcache import LayerCaches
from pollama.ml.base import Backend, Context, RopeMode, Tensor
from pollama.fs.ggml_types import GGMLType
from pollama.models.base import Config, TextModel, positive, register
from pollama.models.llama.model import read_rope_scaling
from pollama.nn import (
    Batch,
    Linear, Module, RMSNorm, RopeScaling, RoutedExperts, Weights, attention, load_weights, make_rope, top_k_then_softmax,
)

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def clamped_swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """gpt-oss's expert activation (ggml_swiglu_oai)."""
    return gate.swiglu_oai(up, SWIGLU_ALPHA, SWIGLU_LIMIT)


class Block(Module):
    """One layer: x + attn(norm(x)), then h + experts(norm(h)); `experts` is built by the model."""

    attn_norm: RMSNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    attn_sinks: Annotated[Tensor, "attn_sinks.weight"]  # [heads]
    post_attention_norm: RMSNorm
    experts: RoutedExperts  # ffn_gate_inp, ffn_{gate,up,down}_exps under blk.N


class OllamaBlock(Block):
    """A layer as Ollama's own gpt-oss files name it; Q, K and V may be one fused projection."""

    attn_qkv: Optional[Linear]  # [q; k; v] rows, from OpenAI's original checkpoint
    attn_q: Optional[Linear]
    attn_k: Optional[Linear]
    attn_v: Optional[Linear]
    attn_output: Annotated[Linear, "attn_out"]
    attn_sinks: Annotated[Tensor, "attn_sinks"]
    post_attention_norm: Annotated[RMSNorm, "ffn_norm"]


@register("gpt-oss")
class GptOss(TextModel):
    # How the router's scores choose and weigh the experts (a class attribute: tests break it).
    route = staticmethod(top_k_then_softmax)
    block = Block

    blk: list[Block]
    output_norm: RMSNorm

    def __init__(self, cfg: Config, w: Weights):
        self.read_dims(cfg)
        self.n_ctx_train = cfg.int("context_length", 131072)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-5)
        self.window = positive(cfg.int("attention.sliding_window", 128), "attention.sliding_window")
        pattern = cfg.list("attention.sliding_window_pattern", None)
        if pattern is not None and len(pattern) != self.n_layers:
            raise ModelError(f"sliding_window_pattern has {len(pattern)} entries for {self.n_layers} layers")
        # As llama.cpp without the key: even layers slide, odd layers see everything.
        self.is_local = [bool(pattern[i]) if pattern is not None else i % 2 == 0 for i in range(self.n_layers)]
        n_used = positive(cfg.int("expert_used_count"), "expert_used_count")
        self.rope = make_rope(cfg.int("rope.dimension_count", self.head_dim), cfg.float("rope.freq_base", 150000.0),
                              RopeMode.NEOX, self.rope_scaling(cfg))

        self.blk = []
        for i in range(self.n_layers):
            block = self.block.__new__(self.block)
            block.experts = RoutedExperts.load(w, f"blk.{i}", n_used=n_used, route=type(self).route,
                                               activation=clamped_swiglu)
            load_weights(block, w, f"blk.{i}", eps=eps)
            self.blk.append(block)
        self.load_weights(w, eps=eps)

    def rope_scaling(self, cfg: Config) -> RopeScaling:
        return read_rope_scaling(cfg)

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        """Full layers keep every position; sliding ones only the window (plus one batch)."""
        return self.windowed_cache(backend, self.is_local, self.window, n_ctx, n_batch, n_seq, dtype)

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        t = len(batch)
        tokens, positions, outputs = batch.bind(ctx)
        x = self.token_embd(tokens)  # [t, dim]
        ctx.record("token_embd", x)
        for i, layer in enumerate(self.blk):
            q, k, v = self.qkv(layer, layer.attn_norm(x))
            q = q.reshape(t, self.n_heads, self.head_dim).rope(positions, self.rope)
            k = k.reshape(t, self.n_kv_heads, self.head_dim).rope(positions, self.rope)
            v = v.reshape(t, self.n_kv_heads, self.v_head_dim)
            a = attention(ctx, q, k, v, cache, i, 1.0 / math.sqrt(self.head_dim), sinks=layer.attn_sinks)
            a = layer.attn_output(a)
            if i == self.n_layers - 1:  # from here on only the rows whose logits are wanted
                a, x = a.rows(outputs), x.rows(outputs)
            ctx.record(f"blk.{i}.attn_out", a)
            x = x + a

            m = layer.experts(layer.post_attention_norm(x))
            ctx.record(f"blk.{i}.ffn_out", m)
            x = x + m
            ctx.record(f"blk.{i}.out", x)
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)
        ctx.record("logits", logits)
        return logits

    def qkv(self, layer: Block, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values [t, width] of normed x, from one fused projection or three."""
        fused = getattr(layer, "attn_qkv", None)
        if fused is None:
            if layer.attn_q is None or layer.attn_k is None or layer.attn_v is None:
                raise ModelError("a layer has neither attn_qkv nor all of attn_q, attn_k and attn_v")
            return layer.attn_q(h), layer.attn_k(h), layer.attn_v(h)
        qkv = fused(h)
        q_end = self.n_heads * self.head_dim
        k_end = q_end + self.k_width
        if fused.out_features != k_end + self.v_width:
            raise ModelError(f"attn_qkv has {fused.out_features} outputs where the heads need {k_end + self.v_width}")
        return qkv.slice(1, 0, q_end), qkv.slice(1, q_end, k_end), qkv.slice(1, k_end, k_end + self.v_width)


@register("gptoss")
class OllamaGptOss(GptOss):
    """gpt-oss as Ollama's own files hold it (architecture `gptoss`): other tensor names
    (attn_out, attn_sinks, ffn_norm), gate and up experts in one tensor with alternating rows,
    Q/K/V fused when converted from OpenAI's original checkpoint, MXFP4 in OpenAI's code order
    (read by pollama/fs/mxfp4.py), and YaRN implied: the keys give only its factor and context."""

    block = OllamaBlock

    def rope_scaling(self, cfg: Config) -> RopeScaling:
        factor = cfg.float("rope.scaling.factor", 1.0)
        return RopeScaling(kind="yarn", factor=factor, original_context=cfg.int("rope.scaling.original_context_length", 4096))
