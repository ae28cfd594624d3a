"""The tiny Qwen2-VL and Qwen2.5-VL checkpoints both test modules use, built once per session."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.tinyhf import bpe_tokenizer, save_tiny, transformers
from pollama.create.convert import convert_hf

from PIL import Image, ImageDraw  # noqa: E402  (the processors need PIL anyway)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
VISION_START, VISION_END, IMAGE_PAD = 3, 4, 5
IMAGES = {"wide": (90, 60), "square": (84, 84)}  # (width, height)

TEXT = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, bos_token_id=None,
            eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
ARCHS = {
    "qwen2vl": (transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLConfig,
                dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2)),
    "qwen25vl": (transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig,
                 dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])),
}


@dataclass
class Case:
    arch: str
    model: Any  # float32, eval
    folder: Path
    gguf: Path
    processor: Any
    pngs: dict[str, bytes]


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([5, 5, width // 2, height // 2], fill=(255, 0, 0))
    draw.ellipse([width // 3, height // 3, width - 1, height - 1], fill=(0, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def processor(tokenizer):
    """Qwen2VLProcessor with the PIL image processor and no video processor (no torchvision here)."""
    from transformers import processing_utils
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    check = processing_utils.ProcessorMixin.check_argument_for_proper_class

    def let_none_through(self, name, argument):
        return None if argument is None else check(self, name, argument)

    processing_utils.ProcessorMixin.check_argument_for_proper_class = let_none_through
    try:
        images = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
        return transformers.Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=None)
    finally:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = check


@pytest.fixture(scope="session", params=list(ARCHS))
def case(request, tmp_path_factory) -> Case:
    arch = request.param
    model_cls, config_cls, vision = ARCHS[arch]
    tmp = tmp_path_factory.mktemp(arch)
    tokenizer = bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    config = config_cls(text_config=TEXT, vision_config=vision, image_token_id=IMAGE_PAD, video_token_id=6,
                        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, tie_word_embeddings=False)
    folder = tmp / "tiny"
    model = save_tiny(model_cls, config, tokenizer, folder)
    gguf = tmp / "tiny.gguf"
    convert_hf(folder, gguf, outtype="f32")
    saved = transformers.AutoTokenizer.from_pretrained(folder)
    pngs = {name: png(w, h, seed) for seed, (name, (w, h)) in enumerate(IMAGES.items())}
    return Case(arch, model, folder, gguf, processor(saved), pngs)


