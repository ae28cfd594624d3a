"""Llama 3.2 Vision's tiled ViT (Meta 2024): an image cut in up to 4 tiles -> cross-attention states.

Each tile is a ViT sequence (class token + patches) told its place by embeddings chosen by the
canvas's aspect ratio; all tiles attend to each other. A local transformer runs first and some
of its layers' inputs are kept; a gated global transformer follows; each patch's output is its
final state concatenated with the kept ones, projected to the text width (`mm.0`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import numpy as np

from pollama.ml.base import Context, Tensor
from pollama.models.base import Config, positive
from pollama.models.mllama.process_image import supported_aspect_ratios
from pollama.errors import ModelError
from pollama.nn import LayerNorm, Linear, Module, Weights, attend, load_weights


MAX_TILES = 16  # Llama 3.2 Vision has 4; bounds the canvases an image is fitted to


class Layer(Module):
    """One encoder layer: x + gate * attn(ln(x)), then h + gate * mlp(ln(h)); gates only in global layers."""

    attn_norm: LayerNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    attn_gate: Optional[Tensor]  # tanh(gate), as the converter stores it
    ffn_norm: LayerNorm
    ffn_up: Linear
    ffn_down: Linear
    ffn_gate: Optional[Tensor]

    def __call__(self, ctx: Context, x: Tensor, heads: int, mask: np.ndarray | None) -> Tensor:
        n, dim = x.shape
        h = self.attn_norm(x)
        q = self.attn_q(h).reshape(n, heads, dim // heads)
        k = self.attn_k(h).reshape(n, heads, dim // heads)
        v = self.attn_v(h).reshape(n, heads, dim // heads)
        a = self.attn_output(attend(ctx, q, k, v, mask))
        x = x + (a * self.attn_gate if self.attn_gate is not None else a)
        # The reference MLP uses exact (erf) GELU.
        m = self.ffn_down(self.ffn_up(self.ffn_norm(x)).gelu_erf())
        return x + (m * self.ffn_gate if self.ffn_gate is not None else m)


class Gated(Module):
    """A table and the gate its rows are multiplied by (when the file has one)."""

    weight: Tensor
    gate: Optional[Tensor]


class TileEmbedding(Gated):
    """Per-aspect-ratio embeddings ([tiles * width] per ratio id), times a gate."""

    def __call__(self, ctx: Context, ratio_id: int, *shape: int) -> Tensor:
        e = self.weight.rows(ctx.input(np.array([ratio_id], dtype=np.int32))).reshape(*shape)
        return e * self.gate if self.gate is not None else e


class VisionModel(Module):
    """`v.*` and `mm.0`: pixel tiles -> cross-attention states [tiles * (patches + 1), text width]."""

    patch_embd: Annotated[Tensor, "patch_embd.weight"]  # the conv kernel [dim, channels, p, p]
    class_embd: Tensor
    pre_tile_position_embd: TileEmbedding
    post_tile_position_embd: TileEmbedding
    position_embd: Gated  # [positions, dim], its gate 1 - tanh(gate)
    # Ollama's files also store tanh(gate) for the tiles; without it, it is 1 - the position gate.
    tile_position_embd: TileEmbedding
    pre_ln: LayerNorm
    post_ln: LayerNorm
    blk: list[Layer]
    global_blk: Annotated[list[Layer], "global.blk"]
    projector: Linear  # mm.0 (outside v.)

    # Embedding tables read with rows() (by position, by aspect-ratio id).
    gathered = ("v.position_embd.weight", "v.pre_tile_position_embd.weight", "v.post_tile_position_embd.weight",
                "v.tile_position_embd.weight")

    def __init__(self, cfg: Config, w: Weights):
        self.dim = positive(cfg.int("vision.embedding_length"), "vision.embedding_length")
        self.heads = positive(cfg.int("vision.attention.head_count"), "vision.attention.head_count")
        if self.dim % self.heads:
            raise ModelError(f"vision width {self.dim} is not a multiple of its {self.heads} heads")
        self.image_size = positive(cfg.int("vision.image_size", 560), "vision.image_size")
        self.patch_size = positive(cfg.int("vision.patch_size", 14), "vision.patch_size")
        self.max_num_tiles = positive(cfg.int("vision.max_num_tiles", 4), "vision.max_num_tiles")
        self.channels = positive(cfg.int("vision.num_channels", 3), "vision.num_channels")
        if self.image_size % self.patch_size:
            raise ModelError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self.grid = self.image_size // self.patch_size
        self.positions = self.grid**2 + 1  # patches and the class token, per tile
        eps = cfg.float("vision.attention.layer_norm_epsilon", 1e-5)
        n_local = cfg.int("vision.block_count")
        self.intermediate = [int(i) for i in cfg.list("vision.intermediate_layers_indices", [])]
        if any(not 0 <= i < n_local for i in self.intermediate):
            raise ModelError(f"vision intermediate layers {self.intermediate} outside the {n_local} layers")

        self.blk = [Layer.load(w, f"v.blk.{i}", eps=eps) for i in range(n_local)]
        self.global_blk = [Layer.load(w, f"v.global.blk.{i}", eps=eps) for i in range(cfg.int("vision.global.block_count"))]
        self.projector = Linear.load(w, "mm.0")
        load_weights(self, w, "v", eps=eps)
        self.tile_gate_from_position = self.tile_position_embd.gate is None and self.position_embd.gate is not None
        self.out_dim = self.projector.out_features
        self._check_shapes()

    def _check_shapes(self) -> None:
        # A file whose tensors disagree with its keys is refused at load, not at the first image.
        if self.max_num_tiles > MAX_TILES:
            raise ModelError(f"vision max_num_tiles {self.max_num_tiles} is over {MAX_TILES}")
        tiles, dim, n = self.max_num_tiles, self.dim, self.positions
        ratios = len(supported_aspect_ratios(tiles)) + 1  # id 0 is no image
        expected = {
            "v.patch_embd.weight": (self.patch_embd, (dim, self.channels, self.patch_size, self.patch_size)),
            "v.class_embd": (self.class_embd, (dim,)),
            "v.position_embd.weight": (self.position_embd.weight, (n, dim)),
            "v.pre_tile_position_embd.weight": (self.pre_tile_position_embd.weight, (ratios, tiles * dim)),
            "v.post_tile_position_embd.weight": (self.post_tile_position_embd.weight, (ratios, tiles * dim)),
            "v.tile_position_embd.weight": (self.tile_position_embd.weight, (ratios, tiles * n * dim)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ModelError(f"{name} has shape {list(tensor.shape)}, expected {list(shape)}")
        if self.projector.weight.shape[1] != self.dim * (1 + len(self.intermediate)):
            raise ModelError(f"mm.0 takes {self.projector.weight.shape[1]} features, the tower gives "
                             f"{self.dim} x (1 + {len(self.intermediate)})")

    def patches(self, pixel_values: np.ndarray) -> np.ndarray:
        """[tiles, C, S, S] -> [tiles * grid^2, C * p * p], each patch in the kernel's (C, row, col) order."""
        t, c, g, p = pixel_values.shape[0], self.channels, self.grid, self.patch_size
        x = pixel_values.reshape(t, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
        return np.ascontiguousarray(x.reshape(t * g * g, c * p * p), dtype=np.float32)

    def mask(self, num_tiles: int, padded: int) -> np.ndarray | None:
        """As Meta's model (and transformers): a query and a key are kept apart only when both
        are padding (positions past a tile's sequence, or tiles past the image's); real
        positions see everything."""
        tiles = self.max_num_tiles
        pad = np.ones((tiles, padded), dtype=bool)
        pad[:num_tiles, : self.positions] = False
        pad = pad.reshape(-1)
        if not pad.any():
            return None
        return np.where(pad[:, None] & pad[None, :], np.float32(-np.inf), np.float32(0))

    def __call__(self, ctx: Context, pixel_values: np.ndarray, ratio_id: int, num_tiles: int) -> Tensor:
        """Cross-attention states [max_num_tiles * positions, text width] for one image."""
        tiles, dim, n = self.max_num_tiles, self.dim, self.positions
        x = ctx.input(self.patches(pixel_values)).linear(self.patch_embd)  # [tiles * grid^2, dim]
        x = x.reshape(tiles, n - 1, dim) + self.pre_tile_position_embd(ctx, ratio_id, tiles, 1, dim)

        cls = ctx.input(np.ones((tiles, 1, dim), dtype=np.float32)) * self.class_embd  # one per tile
        x = cls.concat(x, 1)  # [tiles, n, dim]
        pos = self.position_embd.weight.rows(ctx.input(np.arange(n, dtype=np.int32)))  # [n, dim], float32 whatever its type
        gate = self.position_embd.gate
        x = x + (pos * gate if gate is not None else pos)
        tile_pos = self.tile_position_embd(ctx, ratio_id, tiles, n, dim)
        if self.tile_gate_from_position:
            tile_pos = tile_pos - tile_pos * gate
        x = self.pre_ln(x + tile_pos)

        # Each tile's sequence padded to a multiple of 8, as the model was trained.
        padded = -(-n // 8) * 8
        if padded > n:
            x = x.concat(ctx.input(np.zeros((tiles, padded - n, dim), dtype=np.float32)), 1)
        x = x.reshape(tiles * padded, dim)
        ctx.record("v.embd", x)  # [tiles * padded, dim]: every tile of the canvas, as transformers' layers take it
        mask = self.mask(num_tiles, padded)

        kept = []
        for i, layer in enumerate(self.blk):
            if i in self.intermediate:  # the layer's input (Meta's return_intermediate)
                kept.append(x)
            x = layer(ctx, x, self.heads, mask)
            ctx.record(f"v.blk.{i}.out", x)
        x = self.post_ln(x).reshape(tiles, padded, dim)
        x = (x + self.post_tile_position_embd(ctx, ratio_id, tiles, 1, dim)).reshape(tiles * padded, dim)
        for i, layer in enumerate(self.global_blk):
            x = layer(ctx, x, self.heads, mask)
            ctx.record(f"v.global.blk.{i}.out", x)

        # Per position: the final state, then the kept ones interleaved feature by feature
        # ([dim, k] flattened, as the reference stacks them on a last axis).
        if kept:
            stacked = kept[0].reshape(tiles * padded, dim, 1)
            for h in kept[1:]:
                stacked = stacked.concat(h.reshape(tiles * padded, dim, 1), 2)
            x = x.concat(stacked.reshape(tiles * padded, dim * len(kept)), 1)
        width = dim * (1 + len(kept))
        x = x.reshape(tiles, padded, width)
        if padded > n:
            x = x.slice(1, 0, n)
        out = self.projector(x.reshape(tiles * n, width))
        ctx.record("mm.out", out)  # [tiles * positions, text width]: the rows the cross layers read
        return out

