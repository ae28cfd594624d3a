"""Mistral 3 (Mistral Small 3.1/3.2): Llama's decoder reading images through Pixtral.

The text model is Llama's, weights and forward (GGUF "mistral3" stores its Q/K permuted for
adjacent-pair RoPE, as "llama" does). An image becomes Pixtral patch states, merged 2x2 and
projected to the text width; each row of merged tokens fills a row of [IMG] positions,
closed by [IMG_BREAK] (the last by [IMG_END]), and attends causally like text.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import LayerCaches
from pollama.ml.base import Backend, Context, Tensor
from pollama.models import imageproc
from pollama.models.base import Config, positive, register
from pollama.models.llama.model import Llama, read_rope_scaling
from pollama.models.mistral3 import process_image as pixtral_image
from pollama.models.mistral3.vision import PixtralVision, Projector
from pollama.models.multimodal import Image, ImageToken, Item
from pollama.nn import Weights, make_rope


@register("mistral3")
class Mistral3(Llama):
    def __init__(self, cfg: Config, w: Weights):
        super().__init__(cfg, w)
        self.rope = make_rope(self.rope.dims, self.rope.base, self.rope_mode, yarn_scaling(cfg))
        # Ministral 3 (Llama 4's attention temperature): past original_context_length,
        # queries grow by 1 + beta * ln(1 + floor(position / original_context_length)).
        self.temperature_beta = cfg.float("rope.scaling_beta", 0.0)
        self.temperature_period = cfg.int("rope.scaling.original_context_length", 0)
        self.max_positions = self.n_ctx_train
        # A file without the tower (text only) still runs; images are then refused.
        self.vision_model = PixtralVision(cfg, w) if "v.patch_conv.weight" in w else None
        self.vision = self.vision_model is not None
        self.projector = Projector(cfg, w, cfg.float("attention.layer_norm_rms_epsilon", 1e-5)) if self.vision_model else None
        edge = cfg.int("vision.longest_edge", cfg.int("vision.image_size", pixtral_image.LONGEST_EDGE))
        self.longest_edge = positive(edge, "vision.longest_edge")
        self.patch_size = positive(cfg.int("vision.patch_size", pixtral_image.PATCH_SIZE), "vision.patch_size")
        self.merge = positive(cfg.int("spatial_merge_size", pixtral_image.SPATIAL_MERGE_SIZE), "spatial_merge_size")
        tokens = cfg.list("tokenizer.ggml.tokens", [])
        ids = {t: i for i, t in enumerate(tokens) if t in ("[IMG_BREAK]", "[IMG_END]")}
        self.img_token = cfg.int("image_token_index", pixtral_image.IMG_TOKEN)
        self.img_break = ids.get("[IMG_BREAK]", pixtral_image.IMG_BREAK_TOKEN)
        self.img_end = ids.get("[IMG_END]", pixtral_image.IMG_END_TOKEN)

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        self.max_positions = n_ctx  # positions stay below it: the temperature table's size
        return super().new_cache(backend, n_ctx, n_batch, n_seq, dtype)

    def query_temperature(self, ctx: Context, positions: Tensor) -> Tensor | None:
        if not (self.temperature_beta and self.temperature_period) or self.max_positions <= self.temperature_period:
            return None  # every position is inside the original context: the factor is 1
        # A table by position, gathered by the positions input (so a reused graph stays right).
        periods = np.floor(np.arange(self.max_positions, dtype=np.float64) / self.temperature_period)
        table = (1.0 + self.temperature_beta * np.log1p(periods)).astype(np.float32)[:, None]
        return ctx.input(table, constant=True).rows(positions).reshape(positions.shape[0], 1, 1)

    def preprocess(self, data: bytes) -> pixtral_image.PixtralImage:
        """The image scaled to whole patches as Pixtral takes it."""
        if self.vision_model is None:
            raise ValueError("this model has no vision tower: it cannot read images")
        return pixtral_image.process_image(
            imageproc.decode_image(data), longest_edge=self.longest_edge, patch_size=self.patch_size,
            spatial_merge_size=self.merge)

    def encode_image(self, backend: Backend, data: bytes) -> Image:
        """The image's text-width embeddings, one row per [IMG] position, rows of the grid in order."""
        return self.encode_pixels(backend, self.preprocess(data), Image.digest_of(data))

    def encode_pixels(self, backend: Backend, pre: pixtral_image.PixtralImage, digest: str) -> Image:
        """encode_image after preprocessing (what tests feed transformers too)."""
        _, h, w = pre.pixel_values.shape
        rows, cols = h // self.patch_size, w // self.patch_size
        with backend.context() as ctx:
            x = self.projector(ctx, self.vision_model(ctx, pre.pixel_values), rows, cols)
            (embeds,) = ctx.compute(x)
        return Image(digest=digest, embeds=embeds, meta={"rows": pre.rows, "cols": pre.cols})

    def image_items(self, image: Image) -> list[Item]:
        """Rows of [IMG] positions each closed by [IMG_BREAK], the last by [IMG_END]."""
        rows, cols = image.meta["rows"], image.meta["cols"]
        items: list[Item] = []
        for r in range(rows):
            items += [ImageToken(token=self.img_token, image=image, row=r * cols + c) for c in range(cols)]
            items.append(self.img_end if r == rows - 1 else self.img_break)
        return items


def yarn_scaling(cfg: Config):
    """Llama's rope scaling keys, read as Ollama writes them for mistral3 (zeros for unset betas),
    with YaRN's magnitude as transformers computes it from mscale and mscale_all_dim."""
    scaling = read_rope_scaling(cfg)
    if scaling.kind != "yarn" or scaling.factor <= 1.0:
        return scaling

    def magnitude(m: float) -> float:
        return 0.1 * m * math.log(scaling.factor) + 1.0

    mscale, all_dim = cfg.float("rope.scaling.mscale", 0.0), cfg.float("rope.scaling.mscale_all_dim", 0.0)
    wanted = magnitude(mscale) / magnitude(all_dim) if mscale and all_dim else magnitude(1.0)
    # ggml's YaRN applies magnitude(1) itself: the rest is the attention factor.
    return dataclasses.replace(
        scaling, beta_fast=scaling.beta_fast or 32.0, beta_slow=scaling.beta_slow or 1.0,
        attn_factor=wanted / magnitude(1.0))
