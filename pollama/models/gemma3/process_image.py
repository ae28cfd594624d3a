"""Gemma 3 (SigLIP) image preprocessing: a plain resize to image_size x image_size.

The aspect ratio is not kept (as in transformers and Ollama); pan-and-scan crops, which
transformers offers and Ollama does not, are not done.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pollama.models import imageproc

IMAGE_SIZE = 896
# SiglipImageProcessor: bilinear, to [-1, 1].
NORMALIZATION = imageproc.Normalization(imageproc.HALF_MEAN, imageproc.HALF_STD, imageproc.BILINEAR)


def process_image(
    image: Image.Image,
    *,
    image_size: int = IMAGE_SIZE,
    normalization: imageproc.Normalization = NORMALIZATION,
) -> np.ndarray:
    """One decoded image as [3, image_size, image_size] float32 in [-1, 1] for the SigLIP encoder."""
    image, _, _ = imageproc.rgb_size(image)
    return normalization(image, image_size, image_size)
