"""Qwen2-VL (Wang et al. 2024) and Qwen2.5-VL (Bai et al. 2025): Qwen2's decoder with M-RoPE, and
a ViT (vision.py) whose merged patches take the place of `<|image_pad|>` tokens in the prompt.

M-RoPE gives each position three coordinates (time, row, column) that turn separate sections
of the rotary frequencies. Text has all three equal; an image's tokens share the image's start
and add their row and column in the merged grid, and the text after it resumes at the start
plus the grid's larger side (transformers' get_rope_index, Ollama's PostTokenize).
"""

from __future__ import annotations

import dataclasses

from pollama.ml.base import Backend, RopeMode
from pollama.models import imageproc
from pollama.models.base import Config, register
from pollama.models.multimodal import Image, ImageToken
from pollama.models.qwen2.model import Qwen2
from pollama.models.qwen2vl.process_image import MAX_PIXELS, MIN_PIXELS, Qwen2VLImage, process_image
from pollama.models.qwen2vl.vision import VisionModel
from pollama.errors import ModelError
from pollama.nn import Weights

# Ollama's fixed ids (Qwen2-VL's vocabulary), used when the vocabulary lacks the tokens' texts.
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655
# Ollama's default cap on an image's area for Qwen2.5-VL (2 Mi pixels).
OLLAMA_MAX_PIXELS = 2 << 20


@register("qwen2vl")
class Qwen2VL(Qwen2):
    uses_rope_positions = True
    default_max_pixels = MAX_PIXELS  # transformers' Qwen2VLImageProcessor's

    def __init__(self, cfg: Config, w: Weights):
        super().__init__(cfg, w)  # Qwen2's decoder; its RoPE becomes multi-section below
        sections = [int(s) for s in cfg.list("rope.mrope_section")]
        if len(sections) > 4 or sum(sections) != self.rope.dims // 2:
            raise ModelError(f"rope.mrope_section {sections} does not split {self.rope.dims // 2} rotary frequencies")
        sections += [0] * (4 - len(sections))
        self.rope = dataclasses.replace(self.rope, mode=RopeMode.MROPE, sections=tuple(sections))
        self.v = None
        if "v.patch_embd_0.weight" in w:
            self.vision = True
            self.v = VisionModel(cfg, w)
            if self.v.out_dim != self.dim:
                raise ModelError(f"the vision merger gives rows of {self.v.out_dim}, the text model takes {self.dim}")
            self.min_pixels = cfg.int("vision.min_pixels", MIN_PIXELS)
            self.max_pixels = cfg.int("vision.max_pixels", self.default_max_pixels)
            self.image_markers(cfg)

    def image_markers(self, cfg: Config) -> None:
        """The ids of <|vision_start|>, <|vision_end|>, <|image_pad|>, found by their text."""
        tokens = cfg.list("tokenizer.ggml.tokens", None) or []
        ids: dict[str, int] = {}
        for i, text in enumerate(tokens[: self.vocab_size]):
            ids.setdefault(text, i)

        def find(text: str, default: int) -> int:
            i = ids.get(text, default)
            if not 0 <= i < self.vocab_size:
                raise ModelError(f"the vocabulary has no {text!r} token (needed around images)")
            return i

        self.vision_start = find("<|vision_start|>", VISION_START)
        self.vision_end = find("<|vision_end|>", VISION_END)
        self.image_pad = find("<|image_pad|>", IMAGE_PAD)

    # -- images -------------------------------------------------------------------------------
    def preprocess(self, data: bytes) -> Qwen2VLImage:
        """Decoded, resized to multiples of 28 pixels, normalized and cut into patches."""
        if self.v is None:
            return super().preprocess(data)
        v = self.v
        return process_image(imageproc.decode_image(data), patch_size=v.patch_size, merge_size=v.merge,
                             temporal_patch_size=v.temporal, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def encode_image(self, backend: Backend, data: bytes) -> Image:
        """One row of the text's width per 2x2 group of patches, in row-major order of the merged grid."""
        if self.v is None:
            return super().encode_image(backend, data)
        return self.encode_pixels(backend, self.preprocess(data), Image.digest_of(data))

    def encode_pixels(self, backend: Backend, image: Qwen2VLImage, digest: str) -> Image:
        """encode_image() from preprocessed patches."""
        with backend.context() as ctx:
            (embeds,) = ctx.compute(self.v(ctx, image))
        t, h, w = image.grid_thw
        return Image(digest=digest, embeds=embeds, meta={"grid": (t, h // self.v.merge, w // self.v.merge)})

    def image_items(self, image: Image) -> list:
        """As Qwen2-VL's processor lays an image out: <|vision_start|>, one <|image_pad|> per merged
        group (at the image's rope start plus its (0, row, column)), <|vision_end|>; the text
        after it resumes at the start plus the grid's larger side."""
        if self.v is None:
            return super().image_items(image)
        t, h, w = image.meta["grid"]
        n = t * h * w
        if n != len(image.embeds):
            raise ModelError(f"an image of {len(image.embeds)} rows for a {t}x{h}x{w} grid")
        pads = [
            ImageToken(token=self.image_pad, image=image, row=i, rope=(i // (h * w), i % (h * w) // w, i % w),
                       advance=max(h, w) if i == n - 1 else 0)
            for i in range(n)
        ]
        return [self.vision_start, *pads, self.vision_end]


@register("qwen25vl")
class Qwen25VL(Qwen2VL):
    """The same model class: the tower's blocks (RMSNorm, SwiGLU, windows) follow its tensors."""

    default_max_pixels = OLLAMA_MAX_PIXELS
