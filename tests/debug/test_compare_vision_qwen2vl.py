"""`pollama compare MODEL REF --image FILE` for Qwen2-VL and Qwen2.5-VL: the vision tower (patch
embedding, blocks, the merger's norm, the merger) and the text model with the image in place,
layer by layer against transformers; a bug in a vision block is named in that block.

The tiny models and the image are tests/models/qwen2vl's (conftest.py). Qwen2.5-VL's tower runs
its blocks on the merge groups reordered window by window; the adapter puts them back in our
order, and the square image (3x3 merged cells, windows of 2x2 cells) makes that order differ.
"""

from __future__ import annotations

import numpy as np
import pytest
from cliproc import run_compare
from models.qwen2vl.conftest import ARCHS, IMAGE_PAD, IMAGES, SPECIALS, TEXT, VISION_END, VISION_START, png
from models.tinyhf import bpe_tokenizer, convert, save_tiny

from pollama.debug.compare import compare_model
from pollama.models.qwen2vl import vision as qwen2vl_vision
from debug.test_compare import break_layer, skip

PROMPT = "Look:[img-0] what is it?"
IMAGE = "square"
VISION = ("v.embd ", "v.blk.0.out ", "v.blk.1.out ", "v.merger.ln_q ", "mm.out ")
TEXT_TENSORS = ("token_embd ", "blk.0.attn_out ", "blk.0.ffn_out ", "blk.1.out ", "output_norm ", "logits ")


@pytest.fixture(scope="module", params=list(ARCHS))
def qwen_vlm(request, tmp_path_factory):
    """(arch, HF folder, GGUF, image file) of conftest's tiny model of `arch`."""
    arch = request.param
    model_cls, config_cls, vision = ARCHS[arch]
    tmp = tmp_path_factory.mktemp(f"{arch}-compare")
    tokenizer = bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    config = config_cls(text_config=TEXT, vision_config=vision, image_token_id=IMAGE_PAD, video_token_id=6,
                        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, tie_word_embeddings=False)
    save_tiny(model_cls, config, tokenizer, tmp / "hf")
    gguf = convert(tmp / "hf", tmp / "tiny.gguf")
    image = tmp / "image.png"
    image.write_bytes(png(*IMAGES[IMAGE], seed=1))
    return arch, tmp / "hf", gguf, image


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_vision_tower_merger_and_text_within_tolerance(qwen_vlm, backend, capsys):
    arch, folder, gguf, image = qwen_vlm
    assert run_compare(str(gguf), str(folder), "--image", str(image), "--prompt", PROMPT, "--backend", backend) == 0
    out = capsys.readouterr().out
    for name in VISION + TEXT_TENSORS:
        assert name in out, name
    assert "OK: all 14 tensors" in out and "not in the reference" not in out
    # 84x84 pixels: 6x6 patches of 32 wide, merged into 3x3 rows of the text's 64.
    assert "[36, 32]" in out and "[9, 64]" in out


def test_qwen25vl_window_order_is_not_ours():
    # What makes the un-permuting in pollama/models/qwen2vl/reference.py necessary for this image.
    import torch
    from transformers.vision_utils import get_vision_window_index

    vision = ARCHS["qwen25vl"][2]
    w, h = IMAGES[IMAGE]
    order, _ = get_vision_window_index(torch.tensor([[1, h // 14, w // 14]]), spatial_merge_size=2,
                                       window_size=vision["window_size"], patch_size=14)
    assert sorted(order.tolist()) == list(range(9)) and order.tolist() != list(range(9))


def test_a_bug_in_a_vision_block_is_named_in_that_block(qwen_vlm, monkeypatch):
    # The second block's MLP without its norm: v.embd and v.blk.0 are fine (Qwen2.5-VL's block 0
    # is the windowed one), v.blk.1 is where it shows.
    arch, folder, gguf, image = qwen_vlm
    break_layer(monkeypatch, qwen2vl_vision.Block, "v.blk.1", skip("ln2"))
    report, _ = compare_model(gguf, folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)
    assert report.first_divergent.name == "v.blk.1.out"
    assert [row.name for row in report.rows if row.ok][:2] == ["v.embd", "v.blk.0.out"]


def test_a_text_prompt_compares_the_text_model_of_a_vision_model(qwen_vlm):
    from pollama.debug.record import prompt_tokens

    arch, folder, gguf, _ = qwen_vlm
    report, recording = compare_model(gguf, folder, prompt_tokens(gguf, "the quick brown fox"), "torch")
    assert not report.diverges and not report.missing
    assert not any(name.startswith(("v.", "mm.")) for name in recording.values)
    assert {row.name for row in report.rows} >= {"token_embd", "blk.0.attn_out", "blk.1.ffn_out", "output_norm",
                                                  "logits"}
    assert np.isfinite(report.rows[-1].rel_err)
