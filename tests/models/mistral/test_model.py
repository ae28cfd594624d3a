"""The "mistral" model: registered, proven layer by layer with `pollama compare`, windowed across batches."""

from __future__ import annotations

import numpy as np
import pytest
from models.mistral.test_convert import WINDOW, mistral_case
from models.tinyhf import TOLERANCE, Case, convert, hf_logits

from pollama.debug.compare import compare_model
from pollama.models.base import architectures
from pollama.debug.steps import StepEngine


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return mistral_case(tmp_path_factory.mktemp("mistral"))


def test_registered():
    assert "mistral" in architectures()


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_compare_every_layer_within_tolerance(case, backend):
    report, recording = compare_model(case.gguf, case.folder, case.ids, backend)
    assert recording.arch == "mistral" and not report.diverges, report.table()
    assert [row.name for row in report.rows if row.name.endswith(".out")] == ["blk.0.out", "blk.1.out"]


def test_compare_names_the_first_layer_where_llama_differs(case, tmp_path):
    # The same checkpoint as "llama" attends past the window: its first attention is where it goes wrong.
    report, _ = compare_model(convert(case.folder, tmp_path / "as-llama.gguf"), case.folder, case.ids, "ggml")
    assert report.first_divergent.name == "blk.0.attn_out"


@pytest.mark.parametrize("num_batch", [1, 3, 5])
def test_prefill_in_batches_smaller_and_larger_than_the_window(case, num_batch):
    with StepEngine(case.gguf, num_ctx=64, num_batch=num_batch, kv_cache_type="f32") as engine:
        ours = engine.logits(case.ids)
        assert engine.cache.caches[0].window == WINDOW
    assert np.abs(ours - hf_logits(case.model, case.ids)).max() < TOLERANCE
