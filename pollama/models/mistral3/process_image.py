"""Mistral 3 (Pixtral vision) image preprocessing and the image's token layout.

An image larger than longest_edge is scaled down (aspect kept, sides floored), then each side
is rounded up to a multiple of patch_size * spatial_merge_size, because every merged 2x2 group of
patches becomes one [IMG] token. The prompt gets one row of [IMG] tokens per merged row, each
row closed by [IMG_BREAK] and the last by [IMG_END].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pollama.models import imageproc

LONGEST_EDGE = 1540
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
# PixtralImageProcessor: bicubic, CLIP's mean and std.
NORMALIZATION = imageproc.Normalization(imageproc.CLIP_MEAN, imageproc.CLIP_STD, imageproc.BICUBIC)
# Tekken vocabulary ids of the image tokens.
IMG_TOKEN = 10
IMG_BREAK_TOKEN = 12
IMG_END_TOKEN = 13


@dataclass(frozen=True)
class PixtralImage:
    """One preprocessed image and the size of its token grid."""

    pixel_values: np.ndarray  # [3, H, W] float32, H and W multiples of patch_size * spatial_merge_size
    rows: int  # [IMG] rows (H / (patch_size * spatial_merge_size))
    cols: int  # [IMG] tokens per row

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels after resizing."""
        return self.pixel_values.shape[1], self.pixel_values.shape[2]

    @property
    def num_image_tokens(self) -> int:
        """Tokens the image takes in the prompt, [IMG_BREAK]/[IMG_END] included."""
        return self.rows * (self.cols + 1)

    def token_layout(
        self, img: int = IMG_TOKEN, img_break: int = IMG_BREAK_TOKEN, img_end: int = IMG_END_TOKEN
    ) -> list[int]:
        """The image's prompt tokens: rows of [IMG]*cols + [IMG_BREAK], the last ending in [IMG_END]."""
        tokens: list[int] = []
        for row in range(self.rows):
            tokens.extend([img] * self.cols)
            tokens.append(img_end if row == self.rows - 1 else img_break)
        return tokens


def output_size(height: int, width: int, longest_edge: int, step: int) -> tuple[int, int]:
    """(height, width) after scaling down to fit longest_edge and rounding each side up to a multiple of step."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    ratio = max(height / longest_edge, width / longest_edge)
    if ratio > 1:
        # floor, not round, so the result never exceeds longest_edge before the round-up.
        # math.floor of the quotient, not //: float floor division can differ by one.
        height, width = math.floor(height / ratio), math.floor(width / ratio)
        if height == 0 or width == 0:
            raise ValueError(f"image aspect ratio is too extreme to fit {longest_edge} pixels")
    return -(-height // step) * step, -(-width // step) * step


def process_image(
    image: Image.Image,
    *,
    longest_edge: int = LONGEST_EDGE,
    patch_size: int = PATCH_SIZE,
    spatial_merge_size: int = SPATIAL_MERGE_SIZE,
    normalization: imageproc.Normalization = NORMALIZATION,
) -> PixtralImage:
    """Resize and normalize one decoded image for the Pixtral vision encoder."""
    image, height, width = imageproc.rgb_size(image)
    step = patch_size * spatial_merge_size
    new_height, new_width = output_size(height, width, longest_edge, step)
    return PixtralImage(normalization(image, new_height, new_width), new_height // step, new_width // step)
