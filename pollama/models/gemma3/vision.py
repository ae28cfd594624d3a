"""Gemma 3's image encoder: a SigLIP vision transformer (Zhai et al. 2023) and the projector that
pools its patch states to `mm.tokens_per_image` soft tokens in the text model's width."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import Context, Tensor
from pollama.models.base import Config, positive
from pollama.errors import ModelError
from pollama.nn import LayerNorm, Linear, Module, RMSNorm, Weights, attend, load_weights


FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


class VisionBlock(Module):
    """One pre-norm encoder layer: full attention over the patches, then a GELU MLP."""

    layer_norm1: LayerNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    layer_norm2: LayerNorm
    fc1: Annotated[Linear, "mlp.fc1"]
    fc2: Annotated[Linear, "mlp.fc2"]


class Projector(Module):
    """`mm.*`: the pooled patch states, normalized and projected to the text model's width."""

    mm_soft_emb_norm: RMSNorm  # (weights include Gemma's +1)
    # [vision dim, text dim], applied as x @ W (HF's and Ollama's layout): transposed in the graph.
    mm_input_projection: Annotated[Tensor, "mm_input_projection.weight"]


class VisionModel(Module):
    """Pixels [3, S, S] -> soft tokens [mm.tokens_per_image, text dim]."""

    patch_embedding: Linear
    position_embedding: Annotated[Tensor, "position_embedding.weight"]
    blk: list[VisionBlock]
    post_layernorm: LayerNorm
    mm: Projector  # (under mm., not v.)

    def __init__(self, cfg: Config, w: Weights, text_dim: int):
        self.n_layers = positive(cfg.int("vision.block_count"), "vision.block_count")
        self.dim = positive(cfg.int("vision.embedding_length"), "vision.embedding_length")
        self.n_heads = positive(cfg.int("vision.attention.head_count"), "vision.attention.head_count")
        self.image_size = positive(cfg.int("vision.image_size"), "vision.image_size")
        self.patch_size = positive(cfg.int("vision.patch_size"), "vision.patch_size")
        self.channels = positive(cfg.int("vision.num_channels", 3), "vision.num_channels")
        self.eps = cfg.float("vision.attention.layer_norm_epsilon", 1e-6)
        # Ollama's converter writes mm.tokens_per_image; its model reads mm_tokens_per_image.
        self.tokens = positive(cfg.int("mm.tokens_per_image", cfg.int("mm_tokens_per_image", 256)), "mm.tokens_per_image")
        if self.dim % self.n_heads:
            raise ModelError(f"vision.embedding_length {self.dim} is not a multiple of {self.n_heads} heads")
        self.side = self.image_size // self.patch_size  # patches per side
        self.tokens_side = math.isqrt(self.tokens)
        if self.tokens_side**2 != self.tokens or self.side % self.tokens_side:
            raise ModelError(f"{self.side}x{self.side} patches cannot be pooled to {self.tokens} tokens")

        expect = {
            "v.patch_embedding.weight": (self.dim, self.channels, self.patch_size, self.patch_size),
            "v.position_embedding.weight": (self.side * self.side, self.dim),
            "mm.mm_input_projection.weight": (self.dim, text_dim),
        }
        for name, shape in expect.items():
            if tuple(w[name].shape) != shape:
                raise ModelError(f"{w.source}: tensor {name!r} has shape {list(w[name].shape)}, expected {list(shape)}")
            # The kernel is flattened and the projection transposed in the graph: float types only
            # (Ollama's quantizer, and ours, leave v.* and mm.* unquantized).
            if w[name].dtype not in FLOAT_TYPES:
                raise ModelError(f"{w.source}: tensor {name!r} is {w[name].dtype.name}; it must be F32, F16 or BF16")
        self.blk = [VisionBlock.load(w, f"v.blk.{i}", eps=self.eps) for i in range(self.n_layers)]
        self.mm = Projector.load(w, "mm", eps=self.eps)
        load_weights(self, w, "v", eps=self.eps)

        # Average pooling of the patch grid in kernel x kernel squares, as a [tokens, patches] matrix.
        k = self.side // self.tokens_side
        row, col = np.divmod(np.arange(self.side * self.side), self.side)
        pool = np.zeros((self.tokens, self.side * self.side), dtype=np.float32)
        pool[(row // k) * self.tokens_side + col // k, np.arange(self.side * self.side)] = 1.0 / (k * k)
        self.pool = pool

    def patches(self, pixels: np.ndarray) -> np.ndarray:
        """[3, S, S] -> [patches, 3 * p * p]: row-major over the grid, each in (channel, row, column)
        order, so the patch convolution is a matmul with its kernel."""
        c, p, n = self.channels, self.patch_size, self.side
        if pixels.shape != (c, self.image_size, self.image_size):
            raise ValueError(f"pixels {list(pixels.shape)}, expected {[c, self.image_size, self.image_size]}")
        grid = pixels.reshape(c, n, p, n, p).transpose(1, 3, 0, 2, 4)
        return np.ascontiguousarray(grid.reshape(n * n, c * p * p), dtype=np.float32)

    def __call__(self, ctx: Context, pixels: np.ndarray) -> Tensor:
        n, hd = self.side * self.side, self.dim // self.n_heads
        x = ctx.input(self.patches(pixels)).linear(self.patch_embedding.weight, self.patch_embedding.bias)
        x = x + self.position_embedding.rows(ctx.input(np.arange(n, dtype=np.int32)))  # [n, dim]
        ctx.record("v.embd", x)
        for i, layer in enumerate(self.blk):
            h = layer.layer_norm1(x)
            q = layer.attn_q(h).reshape(n, self.n_heads, hd)
            k = layer.attn_k(h).reshape(n, self.n_heads, hd)
            v = layer.attn_v(h).reshape(n, self.n_heads, hd)
            x = x + layer.attn_output(attend(ctx, q, k, v))
            x = x + layer.fc2(layer.fc1(layer.layer_norm2(x)).gelu())
            ctx.record(f"v.blk.{i}.out", x)
        x = self.post_layernorm(x)
        ctx.record("v.post_layernorm", x)

        x = ctx.input(self.pool).linear(x.transpose())  # pool @ x: [tokens, dim]
        x = self.mm.mm_soft_emb_norm(x)
        w = ctx.view(self.mm.mm_input_projection, 0, self.dim).transpose()  # [text dim, vision dim]
        x = x.linear(w)  # [tokens, text dim]
        ctx.record("mm.out", x)
        return x
