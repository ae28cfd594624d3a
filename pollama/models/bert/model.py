"""BERT (Devlin et al. 2019) as a sentence encoder: a post-norm Transformer encoder, then pooling.

Token, position and segment embeddings are summed and layer-normalized. Each layer is
self-attention over the whole sequence (no causal mask: every token sees every token of its
own sequence) and a GELU MLP, each followed by a residual add and LayerNorm (post-norm, as in
the paper). A sentence's vector is the mean of its tokens' final states, the [CLS] state, or
the last token's (`bert.pooling_type`); sentence-transformers models say which.

The MLP's GELU is the exact (erf) one, as transformers computes hidden_act "gelu" (the
weights were trained with it); llama.cpp and Ollama use the tanh approximation, which moves
all-MiniLM's normalized vectors by about 2e-4.

Several sequences run in one batch laid end to end; a block-diagonal mask keeps them apart,
and each restarts its positions at 0.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import numpy as np

from pollama.ml.base import Context, Tensor
from pollama.models.base import Config, positive, register
from pollama.errors import ModelError
from pollama.nn import Embedding, LayerNorm, Linear, Module, Weights, load_weights


class Pooling(enum.IntEnum):
    """`<arch>.pooling_type` (llama.cpp's and Ollama's numbering)."""

    NONE = 0  # one vector per token
    MEAN = 1
    CLS = 2  # the first token's state ([CLS])
    LAST = 3


class Layer(Module):
    """One encoder layer: h = norm(x + attn(x)), then norm(h + mlp(h))."""

    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    attn_output_norm: LayerNorm
    ffn_up: Linear
    ffn_down: Linear
    layer_output_norm: LayerNorm


@register("bert")
class Bert(Module):
    arch: str
    # Tables read with rows(), which the backend must keep gatherable.
    gathered = ("token_embd.weight", "position_embd.weight", "token_types.weight")

    token_embd: Embedding
    position_embd: Embedding
    token_types: Embedding
    token_embd_norm: LayerNorm
    blk: list[Layer]

    def __init__(self, cfg: Config, w: Weights):
        self.n_layers = positive(cfg.int("block_count"), "block_count")
        self.dim = positive(cfg.int("embedding_length"), "embedding_length")
        self.n_heads = positive(cfg.int("attention.head_count"), "attention.head_count")
        if self.dim % self.n_heads:
            raise ModelError(f"embedding_length {self.dim} is not a multiple of head_count {self.n_heads}")
        self.head_dim = self.dim // self.n_heads
        eps = cfg.float("attention.layer_norm_epsilon", 1e-12)
        if cfg.metadata.get(f"{cfg.arch}.attention.causal", False):
            raise ModelError("a causal BERT is not supported: this encoder attends both ways")
        try:
            self.pooling = Pooling(cfg.int("pooling_type", Pooling.NONE))
        except ValueError as e:
            raise ModelError(f"unsupported {cfg.arch}.pooling_type: {e}") from None
        # Ollama's key: sentence-transformers models that end in a Normalize module.
        self.normalize = bool(cfg.metadata.get(f"{cfg.arch}.normalize_embeddings", True))

        self.blk = [Layer.load(w, f"blk.{i}", eps=eps) for i in range(self.n_layers)]
        load_weights(self, w, eps=eps)
        if self.token_embd.weight.shape[1] != self.dim:
            raise ModelError(f"token_embd.weight is {list(self.token_embd.weight.shape)}, expected [vocab, {self.dim}]")
        # No position beyond the table's rows exists, whatever context_length claims.
        n_positions = self.position_embd.weight.shape[0]
        self.n_ctx_train = min(cfg.int("context_length", n_positions), n_positions)
        self.vocab_size = self.token_embd.weight.shape[0]

    def forward(self, ctx: Context, seqs: Sequence[Sequence[int]], v_rows: bool = False) -> Tensor:
        """Final hidden states [tokens, dim] of the sequences laid end to end.

        `v_rows`: the backend does flash attention and takes V as rows (Backend.flash_attention).
        """
        lens = [len(s) for s in seqs]
        if not lens or min(lens) < 1 or max(lens) > self.n_ctx_train:
            raise ModelError(f"each sequence must have 1 to {self.n_ctx_train} tokens, got lengths {lens}")
        t = sum(lens)
        tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
        positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lens])
        seq_of = np.repeat(np.arange(len(lens)), lens)
        mask = ctx.attention_mask(np.where(seq_of[:, None] == seq_of[None, :], 0.0, -np.inf).astype(np.float32))

        # Every token is in segment 0 (sentence A): one row of token_types, broadcast.
        x = self.token_embd(ctx.input(tokens)) + self.position_embd(ctx.input(positions))
        x = self.token_embd_norm(x + self.token_types(ctx.input(np.zeros(1, dtype=np.int32))))  # [t, dim]
        ctx.record("token_embd", x)
        h, d = self.n_heads, self.head_dim
        for i, layer in enumerate(self.blk):
            q = layer.attn_q(x).reshape(t, h, d)
            k = layer.attn_k(x).reshape(t, h, d)
            v = layer.attn_v(x).reshape(t, h, d)
            a = layer.attn_output(ctx.attention(q, k, v if v_rows else v.permute(1, 2, 0), mask, 1.0 / math.sqrt(d)))
            ctx.record(f"blk.{i}.attn_out", a)
            x = layer.attn_output_norm(x + a)
            m = layer.ffn_down(layer.ffn_up(x).gelu_erf())
            ctx.record(f"blk.{i}.ffn_out", m)
            x = layer.layer_output_norm(x + m)
            ctx.record(f"blk.{i}.out", x)
        return x

    def pool(self, ctx: Context, hidden: Tensor, lens: Sequence[int]) -> Tensor:
        """One vector per sequence [n_seqs, dim] from forward()'s hidden states, by pooling_type."""
        starts = np.cumsum([0, *lens[:-1]]).astype(np.int32)
        if self.pooling == Pooling.MEAN:
            # A matmul averages each sequence's rows: weights [n_seqs, t] @ hidden [t, dim].
            weights = np.zeros((len(lens), sum(lens)), dtype=np.float32)
            for i, (start, n) in enumerate(zip(starts, lens, strict=True)):
                weights[i, start : start + n] = 1.0 / n
            return ctx.input(weights).linear(hidden.permute(1, 0).contiguous())
        if self.pooling == Pooling.CLS:
            return hidden.rows(ctx.input(starts))
        if self.pooling == Pooling.LAST:
            return hidden.rows(ctx.input(starts + np.asarray(lens, dtype=np.int32) - 1))
        raise ModelError("this model has no pooling (pooling_type 0): it gives one vector per token, not per text")
