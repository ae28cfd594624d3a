"""Pixtral (Mistral AI 2024): a ViT for images of any size, with 2-D RoPE, and Mistral 3's projector.

Each 14x14 patch is a token; a patch at grid row r and column c turns a quarter of each head's
frequency pairs by r and another quarter by c (pairs (i, i + head_dim/2), rotate-half), so
the tower needs no position table and takes any aspect ratio. The projector merges each 2x2
neighbourhood of patches into one text-model token.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from pollama.ml.base import Context, Rope, RopeMode, Tensor
from pollama.models.base import Config, positive
from pollama.models.llama.model import Block
from pollama.errors import ModelError
from pollama.nn import Linear, Module, RMSNorm, Weights, attend, load_weights


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """[C, H, W] -> [(H/patch) * (W/patch), C * patch * patch]: patches row by row, each in
    (channel, row, column) order, as a convolution kernel [out, C, patch, patch] reads them."""
    c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    grid = pixels[:, : gh * patch, : gw * patch].reshape(c, gh, patch, gw, patch)
    return np.ascontiguousarray(grid.transpose(1, 3, 0, 2, 4).reshape(gh * gw, c * patch * patch), dtype=np.float32)


class PixtralVision(Module):
    """The vision tower (`v.*`): patch embedding, RMSNorm, transformer blocks with 2-D RoPE."""

    patch_conv: Annotated[Tensor, "patch_conv.weight"]  # [dim, channels, patch, patch]
    encoder_norm: RMSNorm
    # x + attn(norm(x)), then h + swiglu_mlp(norm(h)): a Llama layer's weights, under v.blk
    blk: list[Block]

    def __init__(self, cfg: Config, w: Weights):
        self.n_layers = positive(cfg.int("vision.block_count"), "vision.block_count")
        self.dim = positive(cfg.int("vision.embedding_length", 1024), "vision.embedding_length")
        self.n_heads = positive(cfg.int("vision.attention.head_count", 16), "vision.attention.head_count")
        self.head_dim = positive(cfg.int("vision.attention.key_length", self.dim // self.n_heads), "vision.attention.key_length")
        if self.head_dim * self.n_heads != self.dim or self.head_dim % 4:
            raise ModelError(f"vision head_dim {self.head_dim} x {self.n_heads} heads must be {self.dim}, a multiple of 4")
        self.patch_size = positive(cfg.int("vision.patch_size", 14), "vision.patch_size")
        eps = cfg.float("vision.attention.layer_norm_epsilon", 1e-5)
        base = cfg.float("vision.rope.freq_base", 10000.0)

        # HF's frequencies are base^(-2j/head_dim), j < head_dim/2: even j turn with the row,
        # odd j with the column. ggml's vision rope gives section s slot k the frequency
        # base^(-4k/head_dim), restarting per section: the row's quarter is exactly that, the
        # column's needs one more factor base^(-2/head_dim), given as a divisor per slot.
        quarter = self.head_dim // 4
        self.rope = Rope(dims=self.head_dim // 2, base=base, mode=RopeMode.VISION, sections=(quarter, quarter, 0, 0))
        self.freq_factors = np.concatenate([
            np.ones(quarter, dtype=np.float32),
            np.full(quarter, np.float32(base) ** np.float32(2.0 / self.head_dim), dtype=np.float32),
        ])

        self.blk = [Block.load(w, f"v.blk.{i}", eps=eps) for i in range(self.n_layers)]
        load_weights(self, w, "v", eps=eps)

    def __call__(self, ctx: Context, pixels: np.ndarray) -> Tensor:
        """pixels [3, H, W] (sides multiples of the patch size) -> patch states [rows * cols, dim]."""
        _, h, w = pixels.shape
        rows, cols = h // self.patch_size, w // self.patch_size
        n = rows * cols
        x = ctx.input(patchify(pixels, self.patch_size)).linear(self.patch_conv)  # [n, dim]
        x = self.encoder_norm(x)
        ctx.record("v.embd", x)  # the first layer's input (HF: ln_pre's output)

        r, c = np.divmod(np.arange(n, dtype=np.int32), np.int32(cols))
        positions = ctx.input(np.concatenate([r, c, np.zeros(2 * n, dtype=np.int32)]).astype(np.int32))
        factors = ctx.input(self.freq_factors)
        for i, layer in enumerate(self.blk):
            h_ = layer.attn_norm(x)
            q = layer.attn_q(h_).reshape(n, self.n_heads, self.head_dim).rope(positions, self.rope, factors)
            k = layer.attn_k(h_).reshape(n, self.n_heads, self.head_dim).rope(positions, self.rope, factors)
            v = layer.attn_v(h_).reshape(n, self.n_heads, self.head_dim)
            x = x + layer.attn_output(attend(ctx, q, k, v))  # every patch sees the whole image
            h_ = layer.ffn_norm(x)
            x = x + layer.ffn_down(layer.ffn_gate(h_).swiglu(layer.ffn_up(h_)))
            ctx.record(f"v.blk.{i}.out", x)
        return x


class Projector(Module):
    """Mistral 3's projector (`mm.*`): RMSNorm, 2x2 patch merger, linear, GELU, linear."""

    norm: RMSNorm
    merging_layer: Annotated[Linear, "patch_merger.merging_layer"]
    linear_1: Linear
    linear_2: Linear

    def __init__(self, cfg: Config, w: Weights, eps: float):
        self.merge = positive(cfg.int("spatial_merge_size", 2), "spatial_merge_size")
        act = cfg.str("mm.projector_hidden_act", "gelu")
        if act != "gelu":
            raise ModelError(f"mm.projector_hidden_act {act!r} is not supported (gelu)")
        load_weights(self, w, "mm", eps=eps)

    def merge_index(self, rows: int, cols: int) -> np.ndarray:
        """Patch indices in merged-token order, each token's s x s neighbourhood row by row."""
        s = self.merge
        r = np.arange(rows // s)[:, None, None, None] * s + np.arange(s)[None, None, :, None]
        c = np.arange(cols // s)[None, :, None, None] * s + np.arange(s)[None, None, None, :]
        return (r * cols + c).reshape(-1).astype(np.int32)

    def __call__(self, ctx: Context, x: Tensor, rows: int, cols: int) -> Tensor:
        """Patch states [rows * cols, vdim] -> text embeddings [(rows/s) * (cols/s), dim]."""
        s2 = self.merge * self.merge
        tokens = (rows // self.merge) * (cols // self.merge)
        x = self.norm(x)
        # merging_layer's columns are channel-major (HF unfolds [vdim, s, s] per token):
        # gather each token's s*s patches, then put channels outside the neighbourhood.
        x = x.rows(ctx.input(self.merge_index(rows, cols)))  # [tokens * s2, vdim]
        vdim = x.shape[-1]
        x = x.reshape(tokens, s2, vdim).permute(0, 2, 1).contiguous().reshape(tokens, vdim * s2)
        x = self.merging_layer(x)
        x = self.linear_2(self.linear_1(x).gelu_erf())
        ctx.record("mm.out", x)  # the rows the text model reads, merged tokens row by row
        return x
