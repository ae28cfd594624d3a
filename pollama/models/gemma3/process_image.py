"""Gemma 3 (SigLIP) image preprocessing: a plain resize to image_size x image_size.

The aspect ratio is not kept (as in transformers and Ollama); pan-and-scan crops, which
transformers offers and Ollama does not, are not done.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pollama.models import imageproc

IMAGE_SIZE = 896


def process_image(
    image: Image.Image,
    *,
    image_size: int = IMAGE_SIZE,
    mean: tuple[float, float, float] = imageproc.HALF_MEAN,
    std: tuple[float, float, float] = imageproc.HALF_STD,
    resample: int = imageproc.BILINEAR,
) -> np.ndarray:
    """One decoded image as [3, image_size, image_size] float32 in [-1, 1] for the SigLIP encoder."""
    image = imageproc.to_rgb(image)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    pixels = imageproc.to_chw_uint8(imageproc.resize(image, image_size, image_size, resample))
    return np.ascontiguousarray(imageproc.rescale_and_normalize(pixels, mean, std))
