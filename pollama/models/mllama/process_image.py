"""Llama 3.2 Vision image preprocessing: the image is fitted on the best canvas of tiles and cut.

The canvas is a grid of rows x cols square tiles with rows * cols <= max_num_tiles. The image is
resized (aspect kept) to fit it, padded with black at the bottom and right, normalized, cut into
tiles in row-major order, and the tile list is padded with zero tiles to max_num_tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from pollama.models import imageproc

TILE_SIZE = 560
MAX_NUM_TILES = 4
# MllamaImageProcessor: bilinear, CLIP's mean and std.
NORMALIZATION = imageproc.Normalization(imageproc.CLIP_MEAN, imageproc.CLIP_STD, imageproc.BILINEAR)


@dataclass(frozen=True)
class MllamaImage:
    """One preprocessed image and the tile metadata the vision encoder needs."""

    pixel_values: np.ndarray  # [max_num_tiles, 3, tile_size, tile_size] float32, zero tiles last
    aspect_ratio: tuple[int, int]  # (tile rows, tile cols) of the canvas
    aspect_ratio_id: int  # 1-based index of aspect_ratio in supported_aspect_ratios()
    aspect_ratio_mask: np.ndarray  # [max_num_tiles] int64: 1 for real tiles
    num_tiles: int


@lru_cache(maxsize=16)
def supported_aspect_ratios(max_num_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (rows, cols) tile grid with rows * cols <= max_num_tiles, rows outer; ids count from 1 in this order."""
    return tuple(
        (rows, cols)
        for rows in range(1, max_num_tiles + 1)
        for cols in range(1, max_num_tiles + 1)
        if rows * cols <= max_num_tiles
    )


def best_canvas(height: int, width: int, max_num_tiles: int, tile_size: int) -> tuple[int, int]:
    """The (rows, cols) grid needing the least up-scaling, else the least down-scaling; ties -> least area."""
    grids = supported_aspect_ratios(max_num_tiles)
    # The scale that fits the whole image in each canvas (the smaller of the two axes).
    scales = [min(rows * tile_size / height, cols * tile_size / width) for rows, cols in grids]
    upscales = [s for s in scales if s >= 1]
    chosen_scale = min(upscales) if upscales else max(scales)
    candidates = [grid for grid, s in zip(grids, scales) if s == chosen_scale]
    # min() keeps the first of equal areas, the enumeration order of supported_aspect_ratios.
    return min(candidates, key=lambda grid: grid[0] * grid[1])


def fit_to_canvas(height: int, width: int, canvas_height: int, canvas_width: int, tile_size: int) -> tuple[int, int]:
    """The (height, width) the image is resized to: aspect kept, inside the canvas, each side clamped to >= one tile."""
    target_width = min(max(width, tile_size), canvas_width)
    target_height = min(max(height, tile_size), canvas_height)
    scale_height = target_height / height
    scale_width = target_width / width
    if scale_width < scale_height:
        return min(math.floor(height * scale_width) or 1, target_height), target_width
    return target_height, min(math.floor(width * scale_height) or 1, target_width)


def process_image(
    image: Image.Image,
    *,
    tile_size: int = TILE_SIZE,
    max_num_tiles: int = MAX_NUM_TILES,
    normalization: imageproc.Normalization = NORMALIZATION,
) -> MllamaImage:
    """Tile one decoded image for the mllama vision encoder."""
    if tile_size <= 0 or max_num_tiles <= 0:
        raise ValueError(f"tile_size and max_num_tiles must be positive, got {tile_size} and {max_num_tiles}")
    image, height, width = imageproc.rgb_size(image)
    rows, cols = best_canvas(height, width, max_num_tiles, tile_size)
    canvas_height, canvas_width = rows * tile_size, cols * tile_size
    new_height, new_width = fit_to_canvas(height, width, canvas_height, canvas_width, tile_size)
    resized = normalization.resized(image, new_height, new_width)

    # Padding is black in 8-bit values, so after normalization it is -mean/std, not zero.
    canvas = np.zeros((3, canvas_height, canvas_width), dtype=np.uint8)
    canvas[:, :new_height, :new_width] = resized
    normalized = normalization.normalize(canvas)

    # [3, rows*T, cols*T] -> [rows*cols, 3, T, T], tiles in row-major order.
    tiles = normalized.reshape(3, rows, tile_size, cols, tile_size).transpose(1, 3, 0, 2, 4)
    tiles = tiles.reshape(rows * cols, 3, tile_size, tile_size)
    num_tiles = rows * cols
    pixel_values = np.zeros((max_num_tiles, 3, tile_size, tile_size), dtype=np.float32)
    pixel_values[:num_tiles] = tiles

    mask = np.zeros(max_num_tiles, dtype=np.int64)
    mask[:num_tiles] = 1
    aspect_ratio_id = supported_aspect_ratios(max_num_tiles).index((rows, cols)) + 1
    return MllamaImage(pixel_values, (rows, cols), aspect_ratio_id, mask, num_tiles)
