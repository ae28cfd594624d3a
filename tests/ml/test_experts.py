"""Routed experts on both backends against numpy: ggml_mul_mat_id over F32 / Q8_0 / Q4_0 expert
weights (dequantized by the gguf package's numpy reference), the routing ops (top_k, softmax,
rows per batch, sum_rows, division), and the nn module that composes them.

A bad ggml call aborts the process, so the misuse tests here would crash pytest itself if the
Python-side checks were missing.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf
from pollama.ml.base import BackendError
from pollama.ml.ggml.backend import GGMLBackend
from pollama.nn import RoutedExperts, Weights, softmax_then_top_k, top_k_then_softmax

import torch
from pollama.ml.torch.backend import TorchBackend  # noqa: E402

RNG = np.random.default_rng(18)
N_EXPERTS, DIM, FF = 8, 64, 96
TYPES = (GGMLType.F32, GGMLType.Q8_0, GGMLType.Q4_0)


@pytest.fixture(params=["ggml", "torch"])
def backend(request):
    b = GGMLBackend(n_threads=2) if request.param == "ggml" else TorchBackend()
    yield b
    b.close()


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def encode(w: np.ndarray, t: GGMLType) -> tuple[np.ndarray, np.ndarray]:
    """(bytes for the file, the float32 values a reader must see), by the gguf package."""
    if t == GGMLType.F32:
        return w, w
    raw = gguf_quantize(w, GGMLQuantizationType(int(t)))
    return raw, gguf_dequantize(raw, GGMLQuantizationType(int(t))).reshape(w.shape)


@pytest.fixture(scope="module")
def experts_file(tmp_path_factory):
    """Stacked expert weights [8, 96, 64] in each type, and what they dequantize to."""
    path = tmp_path_factory.mktemp("experts") / "experts.gguf"
    tensors, values = [], {}
    for t in TYPES:
        raw, values[t] = encode(randn(N_EXPERTS, FF, DIM) * 0.1, t)
        tensors.append((f"up.{t.name}", raw, t, (N_EXPERTS, FF, DIM)))
    poisoned = randn(N_EXPERTS, FF, DIM)
    poisoned[5] = np.nan  # an expert no token chooses in test_unchosen_experts_are_never_read
    values["poisoned"] = poisoned
    tensors.append(("up.poisoned", poisoned, GGMLType.F32, (N_EXPERTS, FF, DIM)))
    bias = randn(N_EXPERTS, FF)
    values["bias"] = bias
    tensors.append(("up.bias", bias, GGMLType.F32, (N_EXPERTS, FF)))
    write_gguf(path, {"general.architecture": "test"}, tensors)
    return path, values


def reference(x: np.ndarray, w: np.ndarray, ids: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """out[i, j] = x[i, j or 0] @ w[ids[i, j]].T (+ bias[ids[i, j]]), in float64."""
    t, k = ids.shape
    out = np.zeros((t, k, w.shape[1]))
    for i in range(t):
        for j in range(k):
            row = x[i, j if x.shape[1] > 1 else 0].astype(np.float64)
            out[i, j] = w[ids[i, j]].astype(np.float64) @ row + (0 if bias is None else bias[ids[i, j]])
    return out


@pytest.mark.parametrize("shared_input", [True, False], ids=["x-shared", "x-per-expert"])
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_linear_experts_is_each_tokens_chosen_matmul(backend, experts_file, t, shared_input):
    path, values = experts_file
    tokens, k = 5, 3
    ids = np.array([[0, 1, 2], [7, 3, 0], [2, 2, 6], [4, 5, 1], [6, 0, 3]], dtype=np.int32)
    x = randn(tokens, 1 if shared_input else k, DIM)
    with GGUFFile(path) as gguf:
        weights = backend.load(gguf, [f"up.{t.name}"])
        with backend.context() as ctx:
            (got,) = ctx.compute(ctx.input(x).linear_experts(weights[f"up.{t.name}"], ctx.input(ids)))
    want = reference(x, values[t], ids)
    assert got.shape == (tokens, k, FF)
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    # ggml multiplies quantized weights with activations quantized to Q8_0 (measured 5.2e-3 to
    # 5.7e-3 for Q8_0 and Q4_0 weights here, 7e-8 for F32); torch multiplies the dequantized
    # float32 weights (measured 9e-8 for every type).
    exact = backend.name == "torch" or t == GGMLType.F32
    bound = 2e-7 if exact else 1.2e-2
    assert error < bound, f"{backend.name} {t.name}: relative error {error:.2e}"


def test_linear_experts_bias_is_the_chosen_experts(backend, experts_file):
    path, values = experts_file
    ids = np.array([[3, 1], [0, 7], [1, 1]], dtype=np.int32)
    x = randn(3, 1, DIM)
    with GGUFFile(path) as gguf:
        w = backend.load(gguf, ["up.F32", "up.bias"])
        with backend.context() as ctx:
            (got,) = ctx.compute(ctx.input(x).linear_experts(w["up.F32"], ctx.input(ids), w["up.bias"]))
    np.testing.assert_allclose(got, reference(x, values[GGMLType.F32], ids, values["bias"]), rtol=0, atol=1e-6)  # measured 2.7e-7


def test_unchosen_experts_are_never_read(backend, experts_file):
    # Expert 5's weights are NaN: were they read (multiplied by anything), the output would be NaN.
    path, values = experts_file
    ids = np.array([[0, 1], [7, 3], [2, 4], [6, 0]], dtype=np.int32)
    x = randn(4, 1, DIM)
    with GGUFFile(path) as gguf:
        w = backend.load(gguf, ["up.poisoned"])
        with backend.context() as ctx:
            (got,) = ctx.compute(ctx.input(x).linear_experts(w["up.poisoned"], ctx.input(ids)))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference(x, values["poisoned"], ids), rtol=0, atol=1e-5)  # measured 4.8e-6


def test_routing_ops_against_numpy(backend):
    logits = randn(6, N_EXPERTS)
    table = randn(6, N_EXPERTS, 3)
    with backend.context() as ctx:
        x = ctx.input(logits)
        top = x.top_k(3)
        probs = x.softmax()
        picked = ctx.input(table).rows(top)
        sums = x.sum_rows()
        quotient = x / sums
        got_top, got_probs, got_picked, got_sums, got_quotient = ctx.compute(
            _as_float(ctx, top), probs, picked, sums, quotient
        )
    want_top = np.argsort(-logits, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(got_top.astype(np.int64), want_top)  # largest first
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(got_probs, e / e.sum(-1, keepdims=True), rtol=0, atol=1.2e-7)  # measured 6e-8
    np.testing.assert_array_equal(got_picked, np.take_along_axis(table, want_top[:, :, None], axis=1))
    np.testing.assert_allclose(got_sums, logits.sum(-1, keepdims=True), rtol=0, atol=1e-6)  # measured 4.8e-7
    np.testing.assert_allclose(got_quotient, logits / logits.sum(-1, keepdims=True), rtol=1e-6)  # measured 3.6e-7


def _as_float(ctx, index):
    """An int32 index as float32 (outputs are float32): rows of an identity picked by it."""
    t, k = index.shape
    n = N_EXPERTS
    eye = ctx.input(np.broadcast_to(np.arange(n, dtype=np.float32)[None, :, None], (t, n, 1)).copy())
    return eye.rows(index).reshape(t, k)


def moe_reference(x, router, gate, up, down, k, softmax_first=True, normalize=False):
    """Sparse MoE written from the formula, float64: sum_j w_j * down_e(silu(gate_e x) * up_e x)."""
    x = x.astype(np.float64)
    logits = x @ router.T
    out = np.zeros_like(x)
    chosen = []
    for i, row in enumerate(logits):
        top = np.argsort(-row, kind="stable")[:k]
        if softmax_first:
            p = np.exp(row - row.max())
            p /= p.sum()
            w = p[top] / p[top].sum() if normalize else p[top]
        else:
            p = np.exp(row[top] - row[top].max())
            w = p / p.sum()
        for e, we in zip(top, w):
            g, u = gate[e] @ x[i], up[e] @ x[i]
            out[i] += we * (down[e] @ (g / (1 + np.exp(-g)) * u))
        chosen.append(top)
    return out, np.array(chosen)


@pytest.mark.parametrize("route,softmax_first,normalize", [
    (softmax_then_top_k, True, False),
    (functools.partial(softmax_then_top_k, normalize=True), True, True),
    (top_k_then_softmax, False, False),
], ids=["softmax-topk", "softmax-topk-normalized", "topk-softmax"])
def test_routed_experts_module_is_the_sparse_moe_formula(backend, tmp_path, route, softmax_first, normalize):
    k, tokens = 2, 7
    router = randn(N_EXPERTS, DIM)
    gate, up, down = randn(N_EXPERTS, FF, DIM) * 0.2, randn(N_EXPERTS, FF, DIM) * 0.2, randn(N_EXPERTS, DIM, FF) * 0.2
    path = tmp_path / "moe.gguf"
    write_gguf(path, {"general.architecture": "test"}, [
        ("blk.0.ffn_gate_inp.weight", router, GGMLType.F32, router.shape),
        ("blk.0.ffn_gate_exps.weight", gate, GGMLType.F32, gate.shape),
        ("blk.0.ffn_up_exps.weight", up, GGMLType.F32, up.shape),
        ("blk.0.ffn_down_exps.weight", down, GGMLType.F32, down.shape),
    ])
    x = randn(tokens, DIM)
    want, want_chosen = moe_reference(x, router, gate, up, down, k, softmax_first, normalize)
    assert len({tuple(sorted(c)) for c in want_chosen}) > 2  # tokens route to different experts
    with GGUFFile(path) as gguf:
        moe = RoutedExperts.load(Weights(backend.load(gguf)), "blk.0", n_used=k, route=route)
        with backend.context() as ctx:
            h = ctx.input(x)
            experts, _ = moe.choose(h)
            got, got_chosen = ctx.compute(moe(h), _as_float(ctx, experts))
    np.testing.assert_array_equal(got_chosen.astype(np.int64), want_chosen)
    np.testing.assert_allclose(got, want, rtol=0, atol=1.3e-5)  # measured 6.3e-6 (torch), 3.2e-6 (ggml)


def test_misuse_raises(backend, experts_file):
    path, _ = experts_file
    with GGUFFile(path) as gguf:
        w = backend.load(gguf, ["up.F32", "up.bias"])["up.F32"]
        with backend.context() as ctx:
            x = ctx.input(randn(2, 1, DIM))
            with pytest.raises(BackendError, match="out of range"):
                x.linear_experts(w, ctx.input(np.array([[0, 8], [1, 2]], dtype=np.int32)))
            with pytest.raises(BackendError, match="experts"):
                x.linear_experts(w, ctx.input(np.array([[0, 1]], dtype=np.int32)))  # 1 list for 2 tokens
            with pytest.raises(BackendError, match="does not match"):
                ctx.input(randn(2, 1, DIM + 1)).linear_experts(w, ctx.input(np.zeros((2, 2), np.int32)))
            with pytest.raises(BackendError, match="rows per token"):
                ctx.input(randn(2, 3, DIM)).linear_experts(w, ctx.input(np.zeros((2, 2), np.int32)))
            with pytest.raises(BackendError, match="top_k"):
                ctx.input(randn(2, 4)).top_k(5)
            scores = np.zeros((2, 16), np.float32)
            scores[:, 10], scores[:, 12] = 1.0, 2.0  # the top 2 are no expert of 8
            with pytest.raises(BackendError, match="out of range|16 values"):
                x.linear_experts(w, ctx.input(scores).top_k(2))
            with pytest.raises(BackendError, match="batches"):
                ctx.input(randn(3, 4, 2)).rows(ctx.input(np.zeros((2, 2), np.int32)))
            with pytest.raises(BackendError, match="int32 index"):
                ctx.input(randn(3, 4, 2)).rows(ctx.input(np.zeros(3, np.int32)))
