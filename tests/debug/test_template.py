"""pollama/models/_template is a correct starting point: unregistered, and as it stands it runs a Llama-style checkpoint."""

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
def test_template_copied_as_is_matches_transformers_layer_by_layer(tmp_path, monkeypatch, backend):
    registry = dict(base._REGISTRY)
    try:
        from pollama.models._template.convert import MyModelConverter
        from pollama.models._template.model import MyModel
    finally:
        base._REGISTRY.clear()
        base._REGISTRY.update(registry)  # importing registered it: undo, for the other tests
    # The two lines a newcomer adds (the model registry, the converter list), for this test only.
    monkeypatch.setitem(base._REGISTRY, "mymodel", MyModel)
    monkeypatch.setattr(create_convert, "supported_architectures", lambda: {"LlamaForCausalLM": MyModelConverter})

    c = smollm(tmp_path)
    gguf = tmp_path / "mymodel.gguf"
    create_convert.convert_hf(c.folder, gguf, outtype="f32")
    assert read_metadata(gguf)["general.architecture"] == "mymodel"
    report, recording = compare_model(gguf, c.folder, c.ids, backend)
    assert recording.arch == "mymodel" and not report.diverges, report.table()
