"""`pollama compare MODEL REF --image FILE` for Llama 3.2 Vision (mllama): the tiled ViT's local
and global layers, the projector, and the text model reading the image through its
cross-attention layers, layer by layer against transformers put back to Meta's model
(pollama/models/mllama/reference.py); a bug in one vision layer is named in that layer."""

from __future__ import annotations

import pytest
from cliproc import run_compare
from models.mllama.test_convert import IMAGES, Case

from pollama.debug.compare import compare_model
from pollama.models.mllama import vision as mllama_vision
from debug.test_compare import break_layer, skip

PROMPT = "Look: [img-0]The quick brown fox jumps"  # the tokenizer adds <|begin_of_text|>
VISION = ["v.embd", "v.blk.0.out", "v.blk.1.out", "v.blk.2.out", "v.global.blk.0.out", "v.global.blk.1.out", "mm.out"]


@pytest.fixture(scope="module")
def mllama_vlm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mllama-vlm")
    case = Case(tmp)  # the tiny HF model (3 local + 2 global vision layers, cross layers 1 and 3), converted
    (tmp / "image.png").write_bytes(IMAGES["four-tiles"])
    (tmp / "one-tile.png").write_bytes(IMAGES["one-tile"])
    return case.folder, case.gguf, tmp / "image.png", tmp / "one-tile.png"


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_vision_tower_projector_and_text_within_tolerance(mllama_vlm, backend, capsys):
    folder, gguf, image, _ = mllama_vlm
    assert run_compare(str(gguf), str(folder), "--image", str(image), "--prompt", PROMPT, "--backend", backend) == 0
    out = capsys.readouterr().out
    print(out)
    for name in (*VISION, "token_embd", "blk.0.attn_out", "blk.0.ffn_out", "blk.1.ffn_out", "blk.1.out",
                 "blk.3.out", "blk.4.out", "output_norm", "logits"):
        assert f"\n{name} " in out, name
    assert "blk.1.attn_out" not in out  # a cross-attention layer: transformers has no self_attn there
    assert "OK: all" in out and "not in the reference" not in out


def test_one_tile_masks_the_others_the_same_way(mllama_vlm):
    # One real tile, three masked: the masked tiles' rows (which real rows attend to) match too.
    folder, gguf, _, one_tile = mllama_vlm
    report, recording = compare_model(gguf, folder, [], "torch", image=one_tile.read_bytes(), prompt=PROMPT)
    assert recording.images[0].num_tiles == 1
    assert not report.diverges and not report.missing
    assert [row.name for row in report.rows][: len(VISION)] == VISION


@pytest.mark.parametrize("layer,name", [("v.blk.1", "v.blk.1.out"), ("v.global.blk.0", "v.global.blk.0.out")])
def test_a_bug_in_the_vision_tower_is_named_in_its_layer(mllama_vlm, monkeypatch, layer, name):
    # One vision layer's MLP without its norm: the layers before it are fine, it is where it shows.
    folder, gguf, image, _ = mllama_vlm
    break_layer(monkeypatch, mllama_vision.Layer, layer, skip("ffn_norm"))
    report, _ = compare_model(gguf, folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)
    assert report.first_divergent.name == name
    before = VISION[: VISION.index(name)]
    assert [row.name for row in report.rows if row.ok][: len(before)] == before


def test_a_text_prompt_compares_the_text_model_of_a_vision_model(mllama_vlm):
    from pollama.debug.record import prompt_tokens

    folder, gguf, _, _ = mllama_vlm
    report, recording = compare_model(gguf, folder, prompt_tokens(gguf, "The quick brown fox jumps"), "torch")
    assert not report.diverges and not any(name.startswith(("v.", "mm.")) for name in recording.values)
    assert {row.name for row in report.rows} >= {"token_embd", "blk.0.out", "blk.2.out", "blk.4.out", "logits"}
    # Without an image transformers skips the cross-attention layers (no hook fires); ours
    # records them as what they are then, the identity.
    assert report.missing == ["blk.1.out", "blk.3.out"]


def test_the_reference_is_metas_model_not_unpatched_transformers(mllama_vlm, monkeypatch):
    # transformers 5.24 as it is picks the tower's intermediate states one layer late: the
    # layers all agree, the projector's input does not (see pollama/models/mllama/reference.py).
    from pollama.models.mllama import reference as mllama_reference

    folder, gguf, image, _ = mllama_vlm
    monkeypatch.setattr(mllama_reference, "meta_model", lambda model: model)
    report, _ = compare_model(gguf, folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)
    assert report.first_divergent.name == "mm.out"
