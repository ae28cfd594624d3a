"""`create -q q8_0` of the tiny HF architectures (Llama, Mistral, Qwen2, Gemma 3 text, Qwen3, Qwen3-MoE).

Two references, for two questions:
- Is the quantized model run exactly? transformers with each weight the file holds in Q8_0
  replaced by its Q8_0 value (gguf.quants, bit-identical to ggml's quantizer): our logits are
  as close to it as the float models are to transformers, and the 16 greedy tokens are the same.
- What does Q8_0 cost? Against plain float32 transformers, within the stated error.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from models.gemma3.test_convert import gemma3
from models.llama.test_convert import llama, mistral
from models.qwen2.test_convert import qwen2
from models.qwen3.test_convert import qwen3, qwen3moe
from models.tinyhf import TOLERANCE, hf_greedy, hf_logits, our_greedy, our_logits, torch

from pollama.create.pipeline import create_model
from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.store.store import Store

from gguf import quants as gguf_quants
import gguf  # noqa: E402

BUILDERS = {"llama": llama, "mistral": mistral, "qwen2": qwen2, "gemma3": gemma3, "qwen3": qwen3, "qwen3moe": qwen3moe}

# Max |ours - float32 transformers| on the Q8_0 file, measured (logits have std 0.8): llama
# 0.16 ggml / 0.096 torch, mistral 0.087 / 0.053, qwen2 0.12 / 0.079, gemma3 0.11 / 0.10,
# qwen3 0.077 / 0.057. The torch backend multiplies the exact Q8_0 weights, so this is the
# format's cost, not ggml's.
FLOAT_TOLERANCE = 0.25
# Qwen3-MoE: 0.70 / 0.68, because Q8_0's rounding moves one position's router scores across a
# near tie (position 5 takes another expert in both layers, in transformers too; the other
# positions stay within 0.2): routing turns a small error into a discrete one.
MOE_FLOAT_TOLERANCE = 1.4
# Against transformers with the Q8_0 weights: torch is float32 arithmetic on the very same
# weights (within TOLERANCE, as the float models); ggml also rounds each activation row to 8 bits
# before it multiplies Q8_0 weights (as llama.cpp does), measured 0.051 (mistral) to 0.086 (gemma3).
ROUNDED_TOLERANCE = {"torch": TOLERANCE, "ggml": 0.15}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    c = BUILDERS[request.param](tmp)
    store = Store(tmp / "store")
    create_model(store, "tiny:q8_0", f"FROM {c.folder}\n", tmp, quantize="q8_0")
    return c, store.resolve("tiny:q8_0").model_path


def q8_0_rounded(model, n_quantized: int):
    """A copy of the HF model with every weight our Q8_0 file quantizes (the matrices, and the
    stacked experts, but not the MoE router, which stays F32 as llama.cpp keeps it) rounded
    through F16 and Q8_0, as the file holds it."""
    rounded = copy.deepcopy(model)
    seen = set()
    count = 0
    with torch.no_grad():
        for name, p in rounded.named_parameters(remove_duplicate=False):
            if p.ndim < 2 or id(p) in seen or name.endswith("mlp.gate.weight"):  # (a tied output is the embedding's tensor)
                continue
            seen.add(id(p))
            count += name.endswith("gate_up_proj")  # (transformers fuses two tensors of the file)
            # create converts a folder to F16 first (as Ollama does), then quantizes that.
            data = p.detach().numpy().astype(np.float16).astype(np.float32)
            q = gguf_quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            p.copy_(torch.from_numpy(gguf_quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(data.shape)))
            count += 1
    assert count == n_quantized, f"{count} 2-D weights rounded, the file has {n_quantized} Q8_0 tensors"
    return rounded


def q8_0_tensors(path) -> int:
    with GGUFFile(path) as f:
        types = [t.type for t in f.tensors.values()]
        assert f.metadata["general.file_type"] == 7  # MOSTLY_Q8_0
    assert all(t in (GGMLType.Q8_0, GGMLType.F32) for t in types)
    return sum(t == GGMLType.Q8_0 for t in types)


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_q8_0_file_runs_its_weights_exactly(case, backend):
    c, path = case
    reference = q8_0_rounded(c.model, q8_0_tensors(path))
    ours = our_logits(path, backend, c.ids, exact_gelu=True)
    assert float(np.abs(ours - hf_logits(reference, c.ids)).max()) < ROUNDED_TOLERANCE[backend]
    got, want = our_greedy(path, backend, c.ids), hf_greedy(reference, c.ids)
    if backend == "torch":
        assert got == want
        return
    # ggml's 8-bit activations may decide a near-tie otherwise: only where the reference's two
    # best logits are closer than that rounding's stated error (measured: mistral, step 14, a
    # gap of 0.003; the other three are identical for all 16 steps).
    for step, (a, b) in enumerate(zip(got, want)):
        if a != b:
            top2 = np.sort(hf_logits(reference, c.ids + want[:step])[-1])[-2:]
            assert top2[1] - top2[0] < ROUNDED_TOLERANCE[backend], f"step {step}: {a} vs {b}, gap {top2[1] - top2[0]:.3g}"
            break


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_q8_0_costs_at_most_the_stated_error(case, backend):
    c, path = case
    err = float(np.abs(our_logits(path, backend, c.ids, exact_gelu=True) - hf_logits(c.model, c.ids)).max())
    bound = MOE_FLOAT_TOLERANCE if c.model.config.model_type == "qwen3_moe" else FLOAT_TOLERANCE
    assert 1e-3 < err < bound  # (above 1e-3: the weights really were quantized)
