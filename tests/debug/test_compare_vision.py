"""`pollama compare MODEL REF --image FILE`: the vision tower, the projector and the text model
with the image in place, layer by layer against transformers; a bug in the tower is named there."""

from __future__ import annotations

import pytest
from cliproc import run_compare
from models.gemma3.test_vision import _config, _png, _tokenizer
from models.tinyhf import convert, save_tiny, transformers

from pollama.debug.compare import compare_model
from pollama.models.gemma3 import vision as gemma3_vision
from debug.test_compare import break_layer, skip

PROMPT = "Describe[img-0]the quick brown fox."


@pytest.fixture(scope="module")
def gemma3_vlm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemma3-vlm")
    tok = _tokenizer()
    save_tiny(transformers.Gemma3ForConditionalGeneration, _config(tok), tok, tmp / "hf", seed=3)
    gguf = convert(tmp / "hf", tmp / "tiny.gguf")
    (tmp / "image.png").write_bytes(_png())
    return tmp / "hf", gguf, tmp / "image.png"


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_vision_tower_projector_and_text_within_tolerance(gemma3_vlm, backend, capsys):
    folder, gguf, image = gemma3_vlm
    assert run_compare(str(gguf), str(folder), "--image", str(image), "--prompt", PROMPT, "--backend", backend) == 0
    out = capsys.readouterr().out
    for name in ("v.embd ", "v.blk.0.out ", "v.blk.1.out ", "v.post_layernorm ", "mm.out ", "token_embd ",
                 "blk.0.attn_out ", "blk.1.out ", "output_norm ", "logits "):
        assert name in out, name
    assert "OK: all" in out and "not in the reference" not in out


def test_a_bug_in_the_vision_tower_is_named_in_its_layer(gemma3_vlm, monkeypatch):
    # The second SigLIP layer's MLP without its norm: v.blk.0 is fine, v.blk.1 is where it shows.
    folder, gguf, image = gemma3_vlm
    break_layer(monkeypatch, gemma3_vision.VisionBlock, "v.blk.1", skip("layer_norm2"))
    report, _ = compare_model(gguf, folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)
    assert report.first_divergent.name == "v.blk.1.out"
    assert [row.name for row in report.rows if row.ok][:2] == ["v.embd", "v.blk.0.out"]


def test_an_image_for_a_text_reference_is_refused_in_one_line(gemma3_vlm, tmp_path, capsys):
    from models.gemma3.test_convert import gemma3

    _, _, image = gemma3_vlm
    text = gemma3(tmp_path)
    with pytest.raises(ValueError, match="takes no images|do not take images"):
        compare_model(text.gguf, text.folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)


def test_a_text_prompt_compares_the_text_model_of_a_vision_model(gemma3_vlm):
    from pollama.debug.record import prompt_tokens

    folder, gguf, _ = gemma3_vlm
    report, recording = compare_model(gguf, folder, prompt_tokens(gguf, "the quick brown fox"), "torch")
    assert not report.diverges and not any(name.startswith(("v.", "mm.")) for name in recording.values)
    assert {row.name for row in report.rows} >= {"token_embd", "blk.1.out", "logits"}
