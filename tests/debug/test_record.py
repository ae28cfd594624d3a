"""Debug recording: named intermediates only when asked, the same logits either way, a real model's dump."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from models.llama.test_convert import smollm
from models.tinyhf import Case
from realmodels import real_model

from pollama.debug.record import record_forward
from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.ml.base import Context, Recorder
from pollama.ml.ggml.backend import GGMLBackend
from pollama.ml.ggml.lib import ggml
from pollama.models.base import load_model
from pollama.nn import Batch
from pollama.debug.steps import StepEngine

SMOLLM2_BLOCKS = 30
SMOLLM2_DIM = 576


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return smollm(tmp_path_factory.mktemp("smollm"))


def one_step(gguf_path, ids, recorder) -> tuple[np.ndarray, int, int]:
    """(logits, graph nodes, graph outputs asked) of one forward pass on ggml with this recorder."""
    backend = GGMLBackend(n_threads=1)
    backend.recorder = recorder
    with GGUFFile(gguf_path) as gguf:
        model = load_model(gguf, backend)
        cache = model.new_cache(backend, 32, 32, dtype=GGMLType.F32)
        batch = Batch.single(ids, 0, all_logits=True)
        plans = cache.plan(batch)
        with backend.context() as ctx:
            cache.bind(ctx, plans)
            (logits,) = ctx.compute(model.forward(ctx, batch, cache))
            nodes = ggml.ggml_graph_n_nodes(ctx.graph)
            outputs = len(ctx.outputs)
    backend.close()
    return logits, nodes, outputs


def test_recording_off_leaves_the_graph_as_without_record_calls(case, monkeypatch):
    off = one_step(case.gguf, case.ids, None)
    monkeypatch.setattr(Context, "record", lambda self, name, tensor: None)  # as if no model called it
    bare = one_step(case.gguf, case.ids, None)
    assert off[1:] == bare[1:] == (off[1], 1)
    assert np.array_equal(off[0], bare[0])


def test_recording_on_adds_outputs_and_keeps_logits_bitwise(case):
    logits, nodes, _ = one_step(case.gguf, case.ids, None)
    recorder = Recorder()
    on_logits, on_nodes, on_outputs = one_step(case.gguf, case.ids, recorder)
    assert np.array_equal(on_logits, logits)
    layers = 3
    names = ["token_embd", *(f"blk.{i}.{p}" for i in range(layers) for p in ("attn_out", "ffn_out", "out")),
             "output_norm", "logits"]
    assert list(recorder.values) == names
    assert on_outputs == 1 + len(names) and on_nodes > nodes
    # The last token's row only, by default; the recorded logits are the returned ones.
    assert all(v.shape[0] == 1 for v in recorder.values.values())
    assert np.array_equal(recorder.values["logits"][0], logits[-1])


def test_all_rows_on_both_backends_agree(case):
    ggml_rec = record_forward(case.gguf, case.ids, "ggml", all_rows=True)
    torch_rec = record_forward(case.gguf, case.ids, "torch", all_rows=True)
    assert list(ggml_rec.values) == list(torch_rec.values)
    for name, value in ggml_rec.values.items():
        assert value.shape[0] == len(case.ids)
        assert np.abs(value - torch_rec.values[name]).max() < 1e-4, name


def test_ollama_debug_logs_every_recorded_tensor(case, monkeypatch, caplog):
    monkeypatch.setenv("OLLAMA_DEBUG", "1")
    with caplog.at_level(logging.DEBUG, logger="pollama.debug"):
        one_step(case.gguf, case.ids, Recorder.from_env())
    lines = [r.getMessage() for r in caplog.records if r.name == "pollama.debug"]
    assert len(lines) == 12 and "blk.2.out [1, 64]" in lines[-3] and "finite" in lines[-3]
    monkeypatch.setenv("OLLAMA_DEBUG", "0")
    assert Recorder.from_env() is None and GGMLBackend(n_threads=1).recorder is None


def test_saves_npz_and_safetensors(case, tmp_path):
    rec = record_forward(case.gguf, case.ids, "torch", all_rows=False)
    npz = np.load(rec.save(tmp_path / "dump.npz"))
    assert set(npz.files) == set(rec.values) and np.array_equal(npz["logits"], rec.values["logits"])
    from safetensors.numpy import load_file, safe_open

    st = load_file(rec.save(tmp_path / "dump.safetensors"))
    assert all(np.array_equal(st[name], value) for name, value in rec.values.items())
    with safe_open(tmp_path / "dump.safetensors", "np") as f:
        assert json.loads(f.metadata()["tokens"]) == case.ids
    with pytest.raises(ValueError, match="must end in .npz or .safetensors"):
        rec.save(tmp_path / "dump.bin")


def test_smollm2_dump_has_one_finite_entry_per_block():
    path = real_model("smollm2")
    rec = record_forward(path, [1, 504, 3458, 4236, 28], "ggml", all_rows=False)
    blocks = [name for name in rec.values if name.endswith(".out")]
    assert blocks == [f"blk.{i}.out" for i in range(SMOLLM2_BLOCKS)]
    for name, stats in rec.stats():
        assert "NOT FINITE" not in stats and stats.endswith("finite"), name
    assert rec.values["blk.29.out"].shape == (1, SMOLLM2_DIM) and rec.values["logits"].shape == (1, 49152)


def decode_logits(gguf_path, ids, recorder, steps: int = 5) -> list[np.ndarray]:
    backend = GGMLBackend(n_threads=1)
    backend.recorder = recorder
    with StepEngine(gguf_path, backend=backend, num_ctx=64) as engine:
        logits, _ = engine.prefill(ids)
        out = [logits]
        for _ in range(steps):
            out.append(engine.decode(int(np.argmax(out[-1]))))
    return out


def test_decode_with_kept_graphs_records_every_step_and_computes_the_same(case):
    # Decode reruns kept graphs (rerun): the recorded outputs must come back each time there too.
    recorder = Recorder()
    on = decode_logits(case.gguf, case.ids, recorder)
    off = decode_logits(case.gguf, case.ids, None)
    assert all(np.array_equal(a, b) for a, b in zip(on, off, strict=True))
    assert recorder.steps == 6 and np.array_equal(recorder.values["logits"][0], on[-1])
