"""pollama/models/_template is a correct starting point: never found, and as it stands it runs a
Llama-style checkpoint exactly (a copy found from its own folder: tests/models/test_new_architecture.py)."""

from __future__ import annotations

import pytest
from models.llama.test_convert import smollm

from pollama.create import convert as create_convert
from pollama.debug.compare import compare_model
from pollama.fs.gguf import read_metadata
from pollama.models import base


def test_template_is_not_registered():
    assert "mymodel" not in base.architectures() and "_template" not in base.architectures()
    assert "MyModelForCausalLM" not in create_convert.supported_architectures()


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_template_as_it_stands_matches_transformers_layer_by_layer(tmp_path, monkeypatch, backend):
    registry = dict(base._REGISTRY)
    try:
        from pollama.models._template.convert import MyModelConverter
        from pollama.models._template.model import MyModel
    finally:
        base._REGISTRY.clear()
        base._REGISTRY.update(registry)  # importing registered it: undo, for the other tests
    # The template in place is never found (its folder starts with "_"): what finding a copy
    # would give, for this test only.
    monkeypatch.setitem(base._REGISTRY, "mymodel", MyModel)

    class FromLlama(MyModelConverter):  # (the reference stays a LlamaForCausalLM folder)
        architectures = ("LlamaForCausalLM",)

    c = smollm(tmp_path)
    gguf = tmp_path / "mymodel.gguf"
    create_convert.convert_hf(c.folder, gguf, outtype="f32", converter=FromLlama)
    assert read_metadata(gguf)["general.architecture"] == "mymodel"
    report, recording = compare_model(gguf, c.folder, c.ids, backend)
    assert recording.arch == "mymodel" and not report.diverges, report.table()
