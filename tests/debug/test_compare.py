"""`pollama compare`: tiny random models agree layer by layer; a bug injected in one layer is named there."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from cliproc import run_compare
from models.gemma3.test_convert import gemma3, gemma3_27b_layout
from models.llama.test_convert import llama
from models.qwen2.test_convert import qwen2
from models.tinyhf import Case

from pollama.debug.compare import compare_model
from pollama.ml.base import RopeMode
from pollama.ml.ggml.tensor import GGMLTensor
from pollama.ml.torch.tensor import TorchTensor
from pollama.models.gemma3 import model as gemma3_model
from pollama.models.llama import model as llama_model

BUILDERS = {"llama": llama, "qwen2": qwen2, "gemma3": gemma3}
BROKEN_LAYER = {"llama": 1, "qwen2": 1, "gemma3": 2}  # a middle or last layer, never the first
BLOCKS = {"llama": llama_model.Block, "qwen2": llama_model.Block, "gemma3": gemma3_model.Block}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> tuple[str, Case]:
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def tokens_arg(case: Case) -> str:
    return ",".join(map(str, case.ids))


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_every_tensor_within_tolerance(case, backend, capsys):
    _, c = case
    assert run_compare(str(c.gguf), str(c.folder), "--tokens", tokens_arg(c), "--backend", backend) == 0
    out = capsys.readouterr().out
    n_layers = c.model.config.num_hidden_layers
    assert out.count(".out ") == n_layers and "OK: all" in out and "first divergent" not in out


# -- a bug injected in one layer ---------------------------------------------------------------

def break_block(monkeypatch, block_cls, layer: int, how) -> None:
    """Wrap the Block loader so that layer `layer` (only) is changed by `how(block)`."""
    break_layer(monkeypatch, block_cls, f"blk.{layer}", how)


def break_layer(monkeypatch, cls, prefix: str, how) -> None:
    """Wrap `cls.load` (an nn.Module's) so that the one loaded under `prefix` is changed by `how(layer)`."""
    load = cls.load.__func__

    def broken(c, w, p, **hp):
        layer = load(c, w, p, **hp)
        if p == prefix:
            how(layer)
        return layer

    monkeypatch.setattr(cls, "load", classmethod(broken))


def skip(norm: str):
    """A change to a layer: its norm `norm` left out (the identity)."""
    return lambda layer: setattr(layer, norm, lambda x: x)


skip_ffn_norm = skip("ffn_norm")


def swap_gate_up(block) -> None:
    block.ffn_gate, block.ffn_up = block.ffn_up, block.ffn_gate


def wrong_rope_mode(monkeypatch, layer: int) -> None:
    """RoPE of the other mode (normal <-> NeoX) for one layer's q and k: each layer ropes q then k."""
    for cls in (GGMLTensor, TorchTensor):
        calls = itertools.count()
        original = cls.rope

        def rope(self, positions, params, freq_factors=None, _original=original, _calls=calls):
            if next(_calls) // 2 == layer:
                flipped = RopeMode.NEOX if params.mode == RopeMode.NORMAL else RopeMode.NORMAL
                params = dataclasses.replace(params, mode=flipped)
            return _original(self, positions, params, freq_factors)

        monkeypatch.setattr(cls, "rope", rope)


BUGS = ["rope_mode", "missing_norm", "swapped_gate_up"]


@pytest.mark.parametrize("bug", BUGS)
def test_injected_bug_is_named_in_its_layer(case, bug, monkeypatch, capsys):
    name, c = case
    layer = BROKEN_LAYER[name]
    if bug == "rope_mode":
        wrong_rope_mode(monkeypatch, layer)
    else:
        break_block(monkeypatch, BLOCKS[name], layer, skip_ffn_norm if bug == "missing_norm" else swap_gate_up)
    assert run_compare(str(c.gguf), str(c.folder), "--tokens", tokens_arg(c)) == 1
    captured = capsys.readouterr()
    expected = f"blk.{layer}.attn_out" if bug == "rope_mode" else f"blk.{layer}.ffn_out"
    assert f"DIVERGES at {expected}:" in captured.err
    assert f"{expected} " in next(line for line in captured.out.splitlines() if "first divergent" in line)


def test_report_on_torch_names_the_same_layer(case, monkeypatch):
    name, c = case
    layer = BROKEN_LAYER[name]
    break_block(monkeypatch, BLOCKS[name], layer, swap_gate_up)
    report, _ = compare_model(c.gguf, c.folder, c.ids, "torch")
    assert report.first_divergent.name == f"blk.{layer}.ffn_out"
    assert all(row.ok for row in report.rows[: report.rows.index(report.first_divergent)])


# -- user errors: one line each ----------------------------------------------------------------

def test_errors_are_one_line(case, tmp_path):
    _, c = case
    with pytest.raises(ValueError, match="no config.json") as e:
        run_compare(str(c.gguf), str(tmp_path), "--tokens", "1,2")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="comma-separated integers"):
        run_compare(str(c.gguf), str(c.folder), "--tokens", "1,x")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run_compare(str(c.gguf), str(c.folder), "--tokens", "1,100000")
    with pytest.raises(ValueError, match="must end in .npz or .safetensors"):
        run_compare(str(c.gguf), "--dump", str(tmp_path / "x.txt"))


def test_layer_count_mismatch_is_refused(tmp_path):
    one = llama(tmp_path / "a")
    other = gemma3(tmp_path / "b")
    with pytest.raises(ValueError, match="the model has 2 layers, the reference 4"):
        compare_model(one.gguf, other.folder, one.ids, "torch")


def test_dump_without_reference(case, tmp_path, capsys):
    _, c = case
    assert run_compare(str(c.gguf), "--tokens", tokens_arg(c), "--last-row", "--dump", str(tmp_path / "d.npz")) == 0
    out = capsys.readouterr().out
    assert "blk.0.out" in out and "saved" in out and (tmp_path / "d.npz").is_file()


def test_quantized_model_is_judged_by_its_weight_type(tmp_path, monkeypatch):
    # Q8_0 weights against the float reference: within their own tolerance, and a gross bug still named.
    from pollama.create.convert import convert_hf
    from pollama.create.quantize import quantize_gguf
    from pollama.debug.compare import Q8_TOLERANCE, default_tolerance

    c = llama(tmp_path)
    convert_hf(c.folder, tmp_path / "f16.gguf")
    q8 = tmp_path / "q8_0.gguf"
    quantize_gguf(tmp_path / "f16.gguf", q8, "q8_0")
    assert default_tolerance(q8, "ggml") == Q8_TOLERANCE and default_tolerance(c.gguf, "torch") == 1e-4
    report, _ = compare_model(q8, c.folder, c.ids, "ggml")
    assert not report.diverges
    break_block(monkeypatch, llama_model.Block, 1, swap_gate_up)
    report, _ = compare_model(q8, c.folder, c.ids, "ggml")
    assert report.first_divergent.name == "blk.1.ffn_out"


def test_module_entry_point_prints_one_line_errors(case, capsys):
    from pollama.cli.compare import main

    _, c = case
    assert main([str(c.gguf), str(c.folder), "--tokens", tokens_arg(c), "--backend", "torch"]) == 0
    assert main(["no-such-model", str(c.folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: model 'no-such-model' not found") and "\n" not in err


def test_deep_model_stays_within_the_ggml_tolerance(tmp_path):
    # 62 layers compound ggml's F16 GELU table error: 2.8e-3 at worst (measured), under 1e-2.
    c = gemma3_27b_layout(tmp_path)
    report, _ = compare_model(c.gguf, c.folder, c.ids, "ggml")
    assert not report.diverges and len(report.rows) == 2 + 62 * 3 + 1
