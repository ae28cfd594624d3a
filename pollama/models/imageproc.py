"""Image preprocessing shared by the vision models: safe decoding, resizing, normalization.

Every step reproduces what transformers' PIL image processors do, because those are the
reference the vision models are proven against:
- decode: the first frame of an animated image is used (as Ollama's Go `image.Decode` does for
  GIF); `allow_animated=False` makes it an error instead.
- EXIF orientation is applied, as transformers' `load_image` does for bytes and files (Ollama's
  Go decoder ignores it, which shows phone photos sideways).
- transparency (an alpha band, or a palette/`transparency` entry) is composited on white.
- resizing is PIL's on the 8-bit RGB image, with the filter the model's processor names.
- rescale is done in float64 and rounded to float32, then normalized in float32, so the
  arrays are bitwise those of transformers.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# 8192 x 8192: above a 48-megapixel phone photo, below what makes a decode cost gigabytes.
MAX_IMAGE_PIXELS = 8192 * 8192
# The encoded file itself; a larger upload is refused before any parsing.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Formats Ollama's decoder accepts, plus BMP. PIL's other plugins (EPS runs Ghostscript, and
# several are rarely audited) are never tried on untrusted bytes.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

BILINEAR = Image.Resampling.BILINEAR
BICUBIC = Image.Resampling.BICUBIC


def decode_image(
    data: bytes,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    allow_animated: bool = True,
) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image; a bad image raises a one-line ValueError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("image is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image file is too large: {len(data)} bytes (limit {MAX_IMAGE_BYTES})")
    data = bytes(data)
    # PIL refuses zero-size and enormous headers with less helpful words: say what they claim.
    claimed = _header_size(data)
    if claimed is not None:
        _check_size(*claimed, max_pixels)
    try:
        with warnings.catch_warnings():
            # The size check below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ValueError(f"image is too large: more than {max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise ValueError(
            "image could not be decoded: not a valid " + "/".join(ALLOWED_FORMATS) + " file"
        ) from None
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many kinds on hostile bytes
        raise ValueError(f"image could not be decoded: {_one_line(err)}") from None
    # Image.open has read only the header: check the size before any pixel is decoded.
    _check_size(*image.size, max_pixels)
    # is_animated looks at most one frame ahead; n_frames would walk a whole GIF.
    if not allow_animated and getattr(image, "is_animated", False):
        raise ValueError("animated images are not supported: send a still image")
    try:
        image.seek(0)
        image.load()
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many kinds on hostile bytes
        raise ValueError(f"image could not be decoded: {_one_line(err)}") from None
    return to_rgb(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    # A malformed EXIF block leaves the image as stored rather than refusing it, as viewers do.
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB, compositing any transparency on white (as transformers' convert_to_rgb)."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def resize(image: Image.Image, height: int, width: int, resample: int = BILINEAR) -> Image.Image:
    """Resize an RGB image to height x width with a PIL filter (PIL returns a copy when the size is unchanged)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"cannot resize an image to {width}x{height}")
    return image.resize((width, height), resample=resample)


def to_chw_uint8(image: Image.Image) -> np.ndarray:
    """The RGB image as a [3, H, W] uint8 array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def rgb_size(image: Image.Image) -> tuple[Image.Image, int, int]:
    """The image in RGB and its (height, width); a zero-size image raises ValueError."""
    image = to_rgb(image)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    return image, height, width


@dataclass(frozen=True)
class Normalization:
    """What a transformers image processor configures besides sizes: its resize filter and the
    per-channel mean and std; every vision model resizes and normalizes through one of these."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int

    def resized(self, image: Image.Image, height: int, width: int) -> np.ndarray:
        """The RGB image resized with this filter, as [3, height, width] uint8."""
        return to_chw_uint8(resize(image, height, width, self.resample))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """[3, H, W] uint8 -> float32 (x / 255 - mean) / std."""
        return np.ascontiguousarray(rescale_and_normalize(pixels, self.mean, self.std))

    def __call__(self, image: Image.Image, height: int, width: int) -> np.ndarray:
        """Resize then normalize: [3, height, width] float32."""
        return self.normalize(self.resized(image, height, width))


def rescale_and_normalize(
    pixels: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    scale: float = 1 / 255,
) -> np.ndarray:
    """[C, H, W] 8-bit values -> float32 (x * scale - mean) / std, rounded as transformers rounds."""
    # Scaling in float64 and rounding once to float32 is what makes the result bitwise equal.
    scaled = (pixels.astype(np.float64) * scale).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None, None]
    return (scaled - mean32) / std32


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ValueError(f"image is too large: {width}x{height} pixels (limit {max_pixels} pixels)")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG or GIF header states it, before any decoder runs; None for others."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
