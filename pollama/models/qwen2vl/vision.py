"""The Qwen2-VL / Qwen2.5-VL vision tower: patch embedding, ViT blocks with 2-D RoPE, patch merger.

Patches arrive in merge-group order (process_image.patchify): each 2x2 group of neighbouring
patches is consecutive, so the merger only has to concatenate four rows. Qwen2.5-VL restricts
most blocks to windows of merged cells; transformers reorders the patches window by window,
attends within each and restores the order after the merger. Attention does not depend on the
order of what it attends over, so here the patches keep their order and a block-diagonal mask
(in that order) says which patches share a window: the same function, with no reordering.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from pollama.ml.base import Context, Rope, RopeMode, Tensor
from pollama.models.base import Config, positive
from pollama.models.qwen2vl.process_image import Qwen2VLImage
from pollama.errors import ModelError
from pollama.nn import LayerNorm, Linear, Module, RMSNorm, Weights, attend

EPS = 1e-6  # transformers builds the tower's norms with this, whatever the config says


class Block(Module):
    """Qwen2-VL's layer: x + attn(norm(x)), then x + mlp(norm(x)) with LayerNorm and a quick-GELU MLP."""

    ln1: LayerNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_out: Linear
    ln2: LayerNorm
    ffn_up: Linear
    ffn_down: Linear

    def mlp(self, h: Tensor) -> Tensor:
        return self.ffn_down(self.ffn_up(h).quick_gelu())


class SwiGLUBlock(Block):
    """Qwen2.5-VL's layer: RMSNorm and a SwiGLU MLP."""

    ln1: RMSNorm
    ln2: RMSNorm
    ffn_gate: Linear

    def mlp(self, h: Tensor) -> Tensor:
        return self.ffn_down(self.ffn_gate(h).swiglu(self.ffn_up(h)))


class Merger(Module):
    """`v.merger.*`: each 2x2 group of patch states, side by side, through an MLP to the text width."""

    ln_q: LayerNorm
    mlp_0: Annotated[Linear, "mlp.0"]
    mlp_2: Annotated[Linear, "mlp.2"]


class RMSMerger(Merger):
    """Qwen2.5-VL's merger: its norm is RMSNorm, as its blocks'."""

    ln_q: RMSNorm


class VisionModel(Module):
    """Pixels of one image -> one embedding of the text's width per 2x2 group of patches."""

    patch_embd: list[Tensor]  # v.patch_embd_T.weight: the 3-D kernel as one 2-D kernel per frame
    blk: list[Block]
    merger: Merger

    def __init__(self, cfg: Config, w: Weights):
        self.n_layers = positive(cfg.int("vision.block_count", 32), "vision.block_count")
        self.dim = positive(cfg.int("vision.embedding_length", 1280), "vision.embedding_length")
        self.n_heads = positive(cfg.int("vision.attention.head_count", 16), "vision.attention.head_count")
        self.head_dim = self.dim // self.n_heads
        if self.head_dim * self.n_heads != self.dim or self.head_dim % 4:
            raise ModelError(f"vision width {self.dim} does not split into {self.n_heads} heads of a multiple of 4")
        self.channels = positive(cfg.int("vision.num_channels", 3), "vision.num_channels")
        self.patch_size = positive(cfg.int("vision.patch_size", 14), "vision.patch_size")
        self.merge = positive(cfg.int("vision.spatial_merge_size", 2), "vision.spatial_merge_size")
        self.temporal = positive(cfg.int("vision.temporal_patch_size", 2), "vision.temporal_patch_size")
        eps = cfg.float("vision.attention.layer_norm_epsilon", EPS)

        # Qwen2.5-VL (SwiGLU blocks) attends within windows except in the listed blocks.
        swiglu = "v.blk.0.ffn_gate.weight" in w
        self.window = cfg.int("vision.window_size", 112) // (self.patch_size * self.merge) if swiglu else 0
        if swiglu and self.window <= 0:
            raise ModelError("vision.window_size is smaller than one merged patch")
        # (Ollama's reader asks for this key with the arch prefix twice and so always gets the
        # default; the file's list is what the model was trained with.)
        self.full_blocks = set(cfg.list("vision.fullatt_block_indexes", [7, 15, 23, 31])) if swiglu else set()

        # 2-D RoPE: the first quarter of each head's frequencies turns with the patch's row,
        # the second with its column, over pairs (i, i + head_dim/2) as transformers' rotate_half.
        quarter = self.head_dim // 4
        self.rope = Rope(dims=self.head_dim // 2, base=cfg.float("vision.rope.freq_base", 10000.0),
                         mode=RopeMode.VISION, sections=(quarter, quarter, 0, 0))

        # The 3-D patch convolution as one 2-D kernel per frame (Ollama's split), each applied
        # as a linear map of the flattened patch.
        self.patch_embd = [w[f"v.patch_embd_{t}.weight"] for t in range(self.temporal)]
        for t, kernel in enumerate(self.patch_embd):
            if tuple(kernel.shape) != (self.dim, self.channels, self.patch_size, self.patch_size):
                raise ModelError(f"v.patch_embd_{t}.weight has shape {list(kernel.shape)}")
        block, merger = (SwiGLUBlock, RMSMerger) if swiglu else (Block, Merger)
        self.blk = [block.load(w, f"v.blk.{i}", eps=eps) for i in range(self.n_layers)]
        self.merger = merger.load(w, "v.merger", eps=eps)
        self.out_dim = self.merger.mlp_2.out_features

    def __call__(self, ctx: Context, image: Qwen2VLImage) -> Tensor:
        t, h, w = image.grid_thw
        n = t * h * w
        m2 = self.merge * self.merge
        if image.merge_size != self.merge or h % self.merge or w % self.merge:
            raise ModelError(f"an image grid of {h}x{w} patches does not merge in {self.merge}x{self.merge} groups")
        pixels = image.pixel_values.reshape(n, self.channels, self.temporal, self.patch_size * self.patch_size)

        x = None
        for frame, kernel in enumerate(self.patch_embd):
            patches = ctx.input(np.ascontiguousarray(pixels[:, :, frame]).reshape(n, -1))
            y = patches.linear(kernel)  # [n, dim]
            x = y if x is None else x + y
        ctx.record("v.embd", x)

        positions = ctx.input(self.positions(h, w, t))
        window_mask = self.window_mask(h, w, t) if self.window else None
        for i, layer in enumerate(self.blk):
            hs = layer.ln1(x)
            q = layer.attn_q(hs).reshape(n, self.n_heads, self.head_dim).rope(positions, self.rope)
            k = layer.attn_k(hs).reshape(n, self.n_heads, self.head_dim).rope(positions, self.rope)
            v = layer.attn_v(hs).reshape(n, self.n_heads, self.head_dim)
            mask = None if i in self.full_blocks else window_mask
            x = x + layer.attn_out(attend(ctx, q, k, v, mask))
            x = x + layer.mlp(layer.ln2(x))
            ctx.record(f"v.blk.{i}.out", x)

        # Merger: each group's four patches side by side -> MLP with exact GELU (nn.GELU()).
        x = self.merger.ln_q(x)
        ctx.record("v.merger.ln_q", x)
        x = x.reshape(n // m2, m2 * self.dim)
        out = self.merger.mlp_2(self.merger.mlp_0(x).gelu_erf())
        ctx.record("mm.out", out)
        return out

    def groups(self, h: int, w: int, t: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) in the merged grid of each patch, in merge-group order."""
        index = np.arange(t * h * w) % (h * w) // (self.merge * self.merge)
        return index // (w // self.merge), index % (w // self.merge)

    def positions(self, h: int, w: int, t: int = 1) -> np.ndarray:
        """Each patch's (row, column) in the patch grid, as the VISION rope reads them (int32 [4 n])."""
        n = t * h * w
        within = np.arange(n) % (self.merge * self.merge)
        rows, cols = self.groups(h, w, t)
        out = np.zeros((4, n), dtype=np.int32)
        out[0] = rows * self.merge + within // self.merge
        out[1] = cols * self.merge + within % self.merge
        return out.reshape(-1)

    def window_mask(self, h: int, w: int, t: int = 1) -> np.ndarray:
        """Additive mask [n, n]: 0 between patches whose merged cells lie in the same window."""
        rows, cols = self.groups(h, w, t)
        frame = np.arange(t * h * w) // (h * w)
        windows_across = -(-(w // self.merge) // self.window)
        window = (frame * 1_000_000) + (rows // self.window) * windows_across + cols // self.window
        return np.where(window[:, None] == window[None, :], np.float32(0), np.float32(-np.inf))
