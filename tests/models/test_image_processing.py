"""Image preprocessing is proven equal to transformers' PIL image processors (the slow ones).

Five images made here (noise plus shapes; a PNG with alpha, a tall, a wide and a tiny one) go
through our decoder and each model's process_image, and through transformers' processor built
offline with the model's real settings, plus a small setting that exercises down-scaling.
Both sides resize with PIL's own filters on the same 8-bit image, so the arrays are expected to
be bitwise equal; TOLERANCE is DESIGN.md's 1e-4 and the measured difference is 0.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import PIL
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from pollama.models import imageproc  # noqa: E402
from pollama.models.gemma3 import process_image as gemma3_image  # noqa: E402
from pollama.models.mistral3 import process_image as pixtral_image  # noqa: E402
from pollama.models.mllama import process_image as mllama_image  # noqa: E402
from pollama.models.qwen2vl import process_image as qwen_image  # noqa: E402

TOLERANCE = 1e-4


def _drawn_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    noise = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        # A horizontal alpha ramp, so every level of transparency is composited.
        noise[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image = Image.fromarray(noise, mode)
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 5, height // 5, width // 2, height // 2], fill=(255, 0, 0, 128)[:channels])
    draw.ellipse([width // 3, height // 3, width - 1, height - 1], fill=(0, 90, 200, 255)[:channels])
    draw.line([0, 0, width - 1, height - 1], fill=(0, 255, 0, 0)[:channels], width=max(1, width // 40))
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SAMPLES = {
    "landscape": _drawn_image(300, 200, seed=1),
    "alpha_png": _drawn_image(150, 170, seed=2, mode="RGBA"),
    "tall": _drawn_image(90, 700, seed=3),
    "wide": _drawn_image(1000, 120, seed=4),
    "tiny": _drawn_image(5, 3, seed=5),
}


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def sample(request) -> tuple[str, Image.Image, Image.Image]:
    """(name, the PNG as PIL decodes it for transformers, the PNG as our decoder returns it)."""
    data = _png_bytes(SAMPLES[request.param])
    return request.param, Image.open(io.BytesIO(data)), imageproc.decode_image(data)


@pytest.fixture(scope="module")
def hf_image_processors():
    # The PIL processors directly: the auto classes would pick torchvision ones where installed.
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return {
        "mllama": MllamaImageProcessorPil,
        "qwen2vl": Qwen2VLImageProcessorPil,
        "pixtral": PixtralImageProcessorPil,
        "gemma3": Gemma3ImageProcessorPil,
    }


def _max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == np.float32
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))


@pytest.mark.parametrize("tile_size", [560, 56])  # 560: Llama 3.2 Vision; 56: every image is scaled down
def test_mllama_equals_transformers(sample, hf_image_processors, tile_size):
    name, hf_input, ours_input = sample
    hf = hf_image_processors["mllama"](
        size={"height": tile_size, "width": tile_size},
        max_image_tiles=4,
        image_mean=list(imageproc.CLIP_MEAN),
        image_std=list(imageproc.CLIP_STD),
        resample=Image.Resampling.BILINEAR,
    )(images=[[hf_input]], return_tensors="np")
    ours = mllama_image.process_image(ours_input, tile_size=tile_size, max_num_tiles=4)

    assert _max_diff(ours.pixel_values, hf["pixel_values"][0, 0]) <= TOLERANCE, name
    assert ours.aspect_ratio_id == int(hf["aspect_ratio_ids"][0, 0])
    assert ours.aspect_ratio_mask.tolist() == hf["aspect_ratio_mask"][0, 0].tolist()
    assert ours.num_tiles == hf["num_tiles"][0][0]


@pytest.mark.parametrize(
    "min_pixels,max_pixels",
    [(56 * 56, 28 * 28 * 1280), (28 * 28, 28 * 28 * 16)],  # defaults; a small budget that scales down
)
def test_qwen2vl_equals_transformers(sample, hf_image_processors, min_pixels, max_pixels):
    name, hf_input, ours_input = sample
    hf = hf_image_processors["qwen2vl"](
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )(images=[hf_input], return_tensors="np")
    ours = qwen_image.process_image(ours_input, min_pixels=min_pixels, max_pixels=max_pixels)

    assert _max_diff(ours.pixel_values, hf["pixel_values"]) <= TOLERANCE, name
    assert list(ours.grid_thw) == hf["image_grid_thw"][0].tolist()
    assert ours.num_image_tokens == int(np.prod(hf["image_grid_thw"][0])) // 4


@pytest.mark.parametrize("longest_edge", [1540, 112])  # Mistral Small 3.1; a small edge that scales down
def test_pixtral_equals_transformers(sample, hf_image_processors, longest_edge):
    name, hf_input, ours_input = sample
    # Mistral3's processor hands the image processor patch_size * spatial_merge_size.
    hf = hf_image_processors["pixtral"](
        size={"longest_edge": longest_edge}, patch_size={"height": 28, "width": 28}
    )(images=[hf_input], return_tensors="np")
    ours = pixtral_image.process_image(ours_input, longest_edge=longest_edge, patch_size=14, spatial_merge_size=2)

    assert _max_diff(ours.pixel_values, hf["pixel_values"][0]) <= TOLERANCE, name
    assert list(ours.image_size) == [int(v) for v in hf["image_sizes"][0]]
    height, width = ours.image_size
    assert (ours.rows, ours.cols) == (height // 28, width // 28)


@pytest.mark.parametrize("image_size", [896, 56])  # Gemma 3's SigLIP; the tiny test config
def test_gemma3_equals_transformers(sample, hf_image_processors, image_size):
    name, hf_input, ours_input = sample
    hf = hf_image_processors["gemma3"](
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=Image.Resampling.BILINEAR,
        do_pan_and_scan=False,
    )(images=[hf_input], return_tensors="np")
    ours = gemma3_image.process_image(ours_input, image_size=image_size)

    assert _max_diff(ours, hf["pixel_values"][0]) <= TOLERANCE, name


# ---- metadata and layouts on known cases --------------------------------------------------


def test_mllama_canvas_choice_and_aspect_ratio_ids():
    assert mllama_image.supported_aspect_ratios(4) == (
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1),
    )
    # 90 wide x 60 high on 56-pixel tiles: the smallest up-scaling canvas is 2x2 (id 6).
    assert mllama_image.best_canvas(60, 90, 4, 56) == (2, 2)
    assert mllama_image.process_image(Image.new("RGB", (90, 60)), tile_size=56).aspect_ratio_id == 6
    # No larger than a tile: one tile, the rest of the tiles zero.
    small = mllama_image.process_image(Image.new("RGB", (40, 30)), tile_size=56)
    assert small.num_tiles == 1 and small.aspect_ratio_mask.tolist() == [1, 0, 0, 0]
    assert not small.pixel_values[1:].any()


def test_qwen_smart_resize_and_merge_group_order():
    assert qwen_image.smart_resize(60, 90, 28, 28 * 28, 28 * 28 * 16) == (56, 84)
    image = np.arange(3 * 56 * 56, dtype=np.float32).reshape(3, 56, 56)
    patches, grid_h, grid_w = qwen_image.patchify(image, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert (grid_h, grid_w) == (4, 4) and patches.shape == (16, 3 * 2 * 14 * 14)
    # The first four patches are the top-left 2x2 group: (0,0), (0,1), (1,0), (1,1).
    first_rows = [patch.reshape(3, 2, 14, 14)[0, 0, 0, 0] for patch in patches[:4]]
    assert first_rows == [image[0, 0, 0], image[0, 0, 14], image[0, 14, 0], image[0, 14, 14]]
    # Both temporal frames are the same still image.
    frames = patches.reshape(16, 3, 2, 14, 14)
    assert np.array_equal(frames[:, :, 0], frames[:, :, 1])


def test_pixtral_token_layout():
    processed = pixtral_image.process_image(Image.new("RGB", (90, 60)), longest_edge=112)
    assert processed.image_size == (84, 112) and (processed.rows, processed.cols) == (3, 4)
    img, brk, end = pixtral_image.IMG_TOKEN, pixtral_image.IMG_BREAK_TOKEN, pixtral_image.IMG_END_TOKEN
    row = [img] * 4
    assert processed.token_layout() == row + [brk] + row + [brk] + row + [end]
    assert processed.num_image_tokens == len(processed.token_layout()) == 15


# ---- decoding ------------------------------------------------------------------------------


def test_alpha_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    half = Image.new("LA", (4, 4), (0, 128))
    assert imageproc.decode_image(_png_bytes(clear)).getpixel((0, 0)) == (255, 255, 255)
    assert imageproc.decode_image(_png_bytes(half)).getpixel((0, 0)) == (127, 127, 127)


def test_palette_transparency_is_composited_on_white():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=1)
    assert imageproc.decode_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_process_image_composites_an_undecoded_rgba_image_itself():
    rgba = SAMPLES["alpha_png"]
    decoded = imageproc.decode_image(_png_bytes(rgba))
    ours_from_rgba = gemma3_image.process_image(rgba, image_size=56)
    assert np.array_equal(ours_from_rgba, gemma3_image.process_image(decoded, image_size=56))


def test_exif_orientation_is_applied():
    image = _drawn_image(40, 20, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = imageproc.decode_image(buffer.getvalue())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB")
    assert decoded.size == (20, 40)
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def test_animated_image_uses_first_frame_or_is_refused():
    assert imageproc.decode_image(_animated_gif()).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match=r"^animated images are not supported: send a still image$"):
        imageproc.decode_image(_animated_gif(), allow_animated=False)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is never reached)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # PIL stops reading the header at the first IDAT chunk; its data is never decompressed here.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", r"^image is empty \(0 bytes\)$"),
        (b"this is not an image at all", r"^image could not be decoded: not a valid PNG/JPEG/WEBP/GIF/BMP file$"),
        (_png_bytes(Image.new("RGB", (64, 64)))[:60], r"^image could not be decoded: "),
        (_png_header_only(9000, 9000), r"^image is too large: 9000x9000 pixels \(limit 67108864 pixels\)$"),
        (_png_header_only(100_000, 100_000), r"^image is too large: 100000x100000 pixels"),
        (_png_header_only(0, 10), r"^image has zero size \(0x10\)$"),
    ],
    ids=["empty", "garbage", "truncated", "over-budget", "decompression-bomb", "zero-size"],
)
def test_bad_images_raise_one_line_value_errors(data, message):
    with pytest.raises(ValueError, match=message) as raised:
        imageproc.decode_image(data)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP", "GIF", "JPEG"])
def test_allowed_formats_decode(image_format):
    image = _drawn_image(33, 21, seed=7)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"lossless": True} if image_format == "WEBP" else {}))
    decoded = imageproc.decode_image(buffer.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (33, 21)
    if image_format in ("PNG", "WEBP", "BMP"):  # lossless and not palettized
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_unsupported_format_is_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="TIFF")
    with pytest.raises(ValueError, match="not a valid PNG/JPEG/WEBP/GIF/BMP file"):
        imageproc.decode_image(buffer.getvalue())


def test_extreme_aspect_ratios_raise_value_errors():
    with pytest.raises(ValueError, match=r"aspect ratio 250\.0 is too extreme"):
        qwen_image.process_image(Image.new("RGB", (500, 2)))
    with pytest.raises(ValueError, match="aspect ratio is too extreme"):
        pixtral_image.process_image(Image.new("RGB", (5000, 1)))
