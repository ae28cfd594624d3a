"""`pollama compare MODEL REF --image FILE` on Mistral 3: the Pixtral tower, the patch merger and
projector, and the Mistral text model with the image's rows in place, layer by layer against
transformers; a bug in the tower is named in its layer."""

from __future__ import annotations

import pytest
from cliproc import run_compare
from models.mistral3.test_model import CASES, build

from pollama.debug.compare import compare_model
from pollama.models.mistral3 import vision as mistral3_vision
from debug.test_compare import break_layer, skip

PROMPT = "[INST]What is in this picture? [img-0] Tell me.[/INST]"
# tests/models/mistral3's tiny models: Mistral Small 3.1 (untied head; a wide image, 8x6 patches,
# 3 rows of 4 merged tokens) and Ministral 3 (YaRN and attention temperature; a tall one, 4x8
# patches, 4 rows of 2), each with its (rows, text width) of mm.out.
MERGED = {"mistral-small-3.1": "[12, 64]", "ministral-3": "[8, 64]"}


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict:
    built = {}
    for name in MERGED:
        tmp = tmp_path_factory.mktemp(name)
        case = build(tmp, **CASES[name])
        (tmp / "image.png").write_bytes(case.png)
        built[name] = (case.folder, case.gguf, tmp / "image.png")
    return built


@pytest.fixture
def mistral3_vlm(vlms):
    return vlms["mistral-small-3.1"]


@pytest.mark.parametrize("backend", ["ggml", "torch"])
@pytest.mark.parametrize("case", list(MERGED))
def test_vision_tower_projector_and_text_within_tolerance(vlms, case, backend, capsys):
    folder, gguf, image = vlms[case]
    assert run_compare(str(gguf), str(folder), "--image", str(image), "--prompt", PROMPT, "--backend", backend) == 0
    out = capsys.readouterr().out
    print(out)
    for name in ("v.embd ", "v.blk.0.out ", "v.blk.1.out ", "mm.out ", "token_embd ", "blk.0.attn_out ",
                 "blk.0.ffn_out ", "blk.1.out ", "output_norm ", "logits "):
        assert name in out, name
    assert f"mm.out               {MERGED[case]}" in out
    assert "OK: all" in out and "not in the reference" not in out


def test_a_bug_in_the_vision_tower_is_named_in_its_layer(mistral3_vlm, monkeypatch):
    # The second Pixtral layer's MLP without its norm: v.blk.0 is fine, v.blk.1 is where it shows.
    folder, gguf, image = mistral3_vlm
    break_layer(monkeypatch, mistral3_vision.Block, "v.blk.1", skip("ffn_norm"))
    report, _ = compare_model(gguf, folder, [], "torch", image=image.read_bytes(), prompt=PROMPT)
    assert report.first_divergent.name == "v.blk.1.out"
    assert [row.name for row in report.rows if row.ok][:2] == ["v.embd", "v.blk.0.out"]


def test_a_text_prompt_compares_the_text_model_of_a_vision_model(mistral3_vlm):
    from pollama.debug.record import prompt_tokens

    folder, gguf, _ = mistral3_vlm
    report, recording = compare_model(gguf, folder, prompt_tokens(gguf, "[INST]the quick brown fox[/INST]"), "torch")
    assert not report.diverges and not any(name.startswith(("v.", "mm.")) for name in recording.values)
    assert {row.name for row in report.rows} >= {"token_embd", "blk.0.attn_out", "blk.1.out", "output_norm", "logits"}
