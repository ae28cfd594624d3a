"""Qwen2-VL / Qwen2.5-VL image preprocessing: "smart resize" and patches in merge-group order.

The image is resized so that both sides are multiples of patch_size * merge_size (28) and its
area lies within [min_pixels, max_pixels]; it is then cut into patch_size patches, listed
merge group by merge group (each 2x2 group of neighbouring patches consecutive, because the
patch merger concatenates them), each patch flattened channel-major as [C, T, P, P] with the
single frame repeated over the temporal_patch_size frames the 3D patch embedding expects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pollama.models import imageproc

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# Qwen2VLImageProcessor: bicubic, CLIP's mean and std.
NORMALIZATION = imageproc.Normalization(imageproc.CLIP_MEAN, imageproc.CLIP_STD, imageproc.BICUBIC)
# transformers' Qwen2VLImageProcessor defaults; a model's preprocessor config may widen them.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class Qwen2VLImage:
    """One preprocessed image: flattened patches and their (t, h, w) grid in patches."""

    pixel_values: np.ndarray  # [t*h*w, C*temporal_patch_size*P*P] float32
    grid_thw: tuple[int, int, int]
    merge_size: int

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens the image takes in the prompt (one per merged group of patches)."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size * self.merge_size)


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_SIZE * MERGE_SIZE,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) nearest the image's, both multiples of factor, area within [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {ratio:.1f} is too extreme (limit {MAX_ASPECT_RATIO})")
    # round() is round-half-even, as in the reference.
    new_height = round(height / factor) * factor
    new_width = round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def patchify(
    image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[np.ndarray, int, int]:
    """[C, H, W] -> ([grid_h*grid_w, C*T*P*P] in merge-group order, grid_h, grid_w)."""
    channels, height, width = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    # [C, gh/m, m, P, gw/m, m, P] -> [gh/m, gw/m, m, m, C, P, P]
    groups = image.reshape(
        channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    ).transpose(1, 4, 2, 5, 0, 3, 6)
    # One still image fills every temporal slot: [..., C, T, P, P].
    frames = np.repeat(groups[:, :, :, :, :, None], temporal_patch_size, axis=5)
    flat = frames.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return np.ascontiguousarray(flat, dtype=np.float32), grid_h, grid_w


def process_image(
    image: Image.Image,
    *,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    normalization: imageproc.Normalization = NORMALIZATION,
) -> Qwen2VLImage:
    """Resize, normalize and patchify one decoded image for the Qwen2-VL vision encoder."""
    image, height, width = imageproc.rgb_size(image)
    new_height, new_width = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    normalized = normalization(image, new_height, new_width)
    patches, grid_h, grid_w = patchify(normalized, patch_size, merge_size, temporal_patch_size)
    return Qwen2VLImage(patches, (1, grid_h, grid_w), merge_size)
