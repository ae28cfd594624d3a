"""The ggml backend: ops against numpy, every quant type's matmul, and misuse caught in Python.

A bad call into ggml aborts the process, so each misuse test here would crash pytest itself
if the Python-side check were missing.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from pollama.fs.ggml_types import GGMLType, block_size, type_size
from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf
from pollama.ml.base import BackendError, Rope, RopeMode
from pollama.ml.ggml.backend import GGMLBackend
from pollama.ml.ggml.lib import ggml

import torch
from pollama.ml.torch.quants import SUPPORTED_TYPES, dequantize  # noqa: E402

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def backend():
    b = GGMLBackend(n_threads=2)
    yield b
    b.close()


def randn(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- ops against numpy ------------------------------------------------------------------------
def test_elementwise_and_norms(backend):
    x, w, y = randn(3, 5, 8), randn(8), randn(3, 5, 8)
    with backend.context() as ctx:
        X, W = ctx.input(x), ctx.input(w)
        Y = ctx.input(y)
        outs = ctx.compute(X + W, X * W, X.scale(0.5), X.silu(), X.gelu(), X.tanh(), X.rms_norm(1e-5), X.layer_norm(1e-5), X.softcap(2.0), X.swiglu(Y), X.geglu(Y))
    rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    gelu = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    silu = x / (1 + np.exp(-x))
    expected = [x + w, x * w, x * 0.5, silu, gelu, np.tanh(x), rms, ln, 2 * np.tanh(x / 2), silu * y, gelu * y]
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_shapes_linear_rows(backend):
    x, w, b = randn(4, 6), randn(5, 6), randn(5)
    table, idx = randn(10, 6), np.array([3, 0, 9, 3], dtype=np.int32)
    with backend.context() as ctx:
        X = ctx.input(x)
        lin = X.linear(ctx.input(w), ctx.input(b))
        rows = ctx.input(table).rows(ctx.input(idx))
        perm = X.reshape(2, 2, 6).permute(2, 0, 1)
        back = perm.permute(1, 2, 0).reshape(-1, 6)
        got = ctx.compute(lin, rows, perm, back)
    np.testing.assert_allclose(got[0], x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], table[idx])
    np.testing.assert_array_equal(got[2], x.reshape(2, 2, 6).transpose(2, 0, 1))
    np.testing.assert_array_equal(got[3], x)


def rope_reference(x: np.ndarray, pos: np.ndarray, dims: int, base: float, neox: bool) -> np.ndarray:
    out = x.astype(np.float64).copy()
    for t in range(x.shape[0]):
        for i in range(dims // 2):
            theta = pos[t] * base ** (-2 * i / dims)
            a, b = (i, i + dims // 2) if neox else (2 * i, 2 * i + 1)
            c, s = math.cos(theta), math.sin(theta)
            out[t, :, a] = x[t, :, a] * c - x[t, :, b] * s
            out[t, :, b] = x[t, :, a] * s + x[t, :, b] * c
    return out


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX])
def test_rope(backend, mode):
    x, pos = randn(5, 3, 16), np.array([0, 1, 7, 100, 2000], dtype=np.int32)
    rope = Rope(dims=12, base=10000.0, mode=mode)  # partial: the last 4 dims pass through
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(x).rope(ctx.input(pos), rope))
    np.testing.assert_allclose(got, rope_reference(x, pos, 12, 10000.0, mode == RopeMode.NEOX), rtol=1e-4, atol=1e-4)


def test_attention_with_cache_gqa_window_softcap(backend):
    t, h, hkv, d, n_cells = 4, 6, 2, 8, 16
    q, k, v = randn(t, h, d), randn(t, hkv, d), randn(t, hkv, d)
    k_cache = backend.zeros((n_cells, hkv * d), GGMLType.F16)
    v_cache = backend.zeros((hkv * d, n_cells), GGMLType.F16)  # V transposed, as llama.cpp keeps it
    cells = np.array([5, 1, 2, 9], dtype=np.int32)
    mask = np.full((t, 10), -np.inf, dtype=np.float32)
    for i in range(t):  # token i sees itself and earlier tokens, at most 2 back
        for j in range(max(0, i - 1), i + 1):
            mask[i, cells[j]] = 0
    with backend.context() as ctx:
        c = ctx.input(cells)
        ctx.store(k_cache, c, ctx.input(k))
        ctx.store_columns(v_cache, c, ctx.input(v))
        keys = ctx.view(k_cache, 0, 10).reshape(10, hkv, d)
        values = ctx.view_columns(v_cache, 0, 10, heads=hkv)
        (got,) = ctx.compute(ctx.attention(ctx.input(q), keys, values, ctx.attention_mask(mask), 0.3, softcap=5.0))
    K, V = np.zeros((10, hkv, d)), np.zeros((10, hkv, d))
    K[cells], V[cells] = k, v
    want = np.zeros((t, h, d))
    for head in range(h):
        g = head // (h // hkv)
        s = q[:, head] @ K[:, g].T * 0.3
        s = 5.0 * np.tanh(s / 5.0) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        want[:, head] = (p / p.sum(-1, keepdims=True)) @ V[:, g]
    np.testing.assert_allclose(got, want.reshape(t, h * d), rtol=2e-3, atol=2e-3)


# -- every weight type: ggml's matmul against dequantize-then-matmul --------------------------
QUANTIZABLE = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
    GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
    GGMLType.Q6_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.MXFP4, GGMLType.NVFP4, GGMLType.Q1_0,
    GGMLType.Q2_0,
]


def ggml_quantize(w: np.ndarray, t: GGMLType) -> np.ndarray:
    """Quantize rows with ggml's own reference quantizer (no importance matrix)."""
    rows, cols = w.shape
    out = np.zeros(rows * cols // block_size(t) * type_size(t), dtype=np.uint8)
    src = np.ascontiguousarray(w, dtype=np.float32)
    ggml.ggml_quantize_init(int(t))
    written = ggml.ggml_quantize_chunk(
        int(t), src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, 0, rows, cols, None
    )
    assert written == out.nbytes
    return out


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A GGUF holding one 64x512 weight per type (64 rows: repackable types get repacked)."""
    path = tmp_path_factory.mktemp("quant") / "weights.gguf"
    w = randn(64, 512)
    tensors = [(f"w.{t.name}", ggml_quantize(w, t), t, (64, 512)) for t in QUANTIZABLE if t in SUPPORTED_TYPES]
    write_gguf(path, {"general.architecture": "test"}, tensors)
    return path


@pytest.mark.parametrize("t", QUANTIZABLE, ids=lambda t: t.name)
def test_matmul_each_type_equals_dequantize_then_matmul(backend, weights_file, t):
    if t not in SUPPORTED_TYPES:
        pytest.skip(f"the torch reference does not dequantize {t.name}")
    x = randn(7, 512)
    with GGUFFile(weights_file) as gguf:
        weights = backend.load(gguf, [f"w.{t.name}"])
        w = weights[f"w.{t.name}"]
        assert w.dtype == t
        with backend.context() as ctx:
            (got,) = ctx.compute(ctx.input(x).linear(w))
        info = gguf.tensors[f"w.{t.name}"]
        reference = x.astype(np.float64) @ dequantize(gguf.tensor_bytes(info.name), t, info.shape).double().numpy().T
        backend.free(weights)
    # Quantized types multiply with activations quantized to 8 bits per block (F16 for F16,
    # BF16 for BF16, exact for F32): the error is relative to the size of the output.
    tolerance = {GGMLType.F32: 1e-5, GGMLType.F16: 2e-3, GGMLType.BF16: 1e-2}.get(t, 1.5e-2)
    error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
    assert error < tolerance, f"{t.name}: relative error {error:.2e}"


def test_repacked_weights_are_used_and_row_lookup_refused(backend, weights_file):
    with GGUFFile(weights_file) as gguf:
        weights = backend.load(gguf, ["w.Q4_0", "w.Q8_0"])
        assert weights["w.Q4_0"].repacked and not weights["w.Q8_0"].repacked
        with backend.context() as ctx:
            with pytest.raises(BackendError, match="repacked"):
                weights["w.Q4_0"].rows(ctx.input(np.array([0], dtype=np.int32)))
        backend.free(weights)
        gathered = backend.load(gguf, ["w.Q4_0"], gathered={"w.Q4_0"})
        assert not gathered["w.Q4_0"].repacked
        backend.free(gathered)


# -- misuse is a BackendError, never an abort -------------------------------------------------
def test_shape_mismatches_raise(backend):
    with backend.context() as ctx:
        x = ctx.input(randn(4, 8))
        with pytest.raises(BackendError, match="does not match weight"):
            x.linear(ctx.input(randn(3, 7)))
        with pytest.raises(BackendError, match="does not broadcast"):
            x + ctx.input(randn(3, 8))
        with pytest.raises(BackendError, match="cannot reshape"):
            x.reshape(5, 7)
        with pytest.raises(BackendError, match="permutation"):
            x.permute(0, 0)
        with pytest.raises(BackendError, match="rope"):
            x.rope(ctx.input(np.zeros(4, np.int32)), Rope(dims=8))
        q, k, v_t = ctx.input(randn(2, 4, 8)), ctx.input(randn(3, 3, 8)), ctx.input(randn(3, 8, 3))
        with pytest.raises(BackendError, match="attention shapes"):
            ctx.attention(q, k, v_t, ctx.attention_mask(np.zeros((2, 3), np.float32)), 1.0)
        k2, v2 = ctx.input(randn(3, 2, 8)), ctx.input(randn(2, 8, 3))
        with pytest.raises(BackendError, match="attention_mask"):
            ctx.attention(q, k2, v2, ctx.input(np.zeros((2, 3), np.float32)), 1.0)
        with pytest.raises(BackendError, match="out of range"):
            ctx.input(randn(5, 8)).rows(ctx.input(np.array([5], np.int32)))
        with pytest.raises(BackendError, match="float32 or int32"):
            ctx.input(np.zeros(3, dtype=np.float64))


def test_freed_tensors_raise(backend, weights_file):
    ctx = backend.context()
    x = ctx.input(randn(2, 8))
    ctx.close()
    other = backend.context()
    with pytest.raises(BackendError, match="freed"):
        x + other.input(randn(2, 8))
    with pytest.raises(BackendError, match="closed"):
        ctx.input(randn(2))
    other.close()

    with GGUFFile(weights_file) as gguf:
        weights = backend.load(gguf, ["w.F32"])
        backend.free(weights)
        with backend.context() as ctx:
            with pytest.raises(BackendError, match="freed"):
                ctx.input(randn(2, 512)).linear(weights["w.F32"])

    cache = backend.zeros((4, 8), GGMLType.F16)
    backend.free(cache)
    with backend.context() as ctx:
        with pytest.raises(BackendError, match="freed"):
            ctx.view(cache, 0, 2)


def test_unsupported_types_raise(backend, tmp_path):
    path = tmp_path / "ints.gguf"
    write_gguf(path, {"general.architecture": "test"}, [("i", np.arange(8, dtype=np.int32).view(np.uint8), GGMLType.I32, (8,)), ("d", np.zeros(4, dtype=np.float64).view(np.uint8), GGMLType.F64, (4,))])
    with GGUFFile(path) as gguf:
        with pytest.raises(BackendError, match="F64"):
            backend.load(gguf, ["d"])
        weights = backend.load(gguf, ["i"])
        with backend.context() as ctx:
            with pytest.raises(BackendError, match="matmul type"):
                ctx.input(randn(1, 8)).linear(weights["i"])
        backend.free(weights)
    with pytest.raises(BackendError, match="cache"):
        backend.zeros((4, 8), GGMLType.Q4_0)


def test_context_reuse_and_cross_context_raise(backend):
    a, b = backend.context(), backend.context()
    x, y = a.input(randn(2, 3)), b.input(randn(2, 3))
    with pytest.raises(BackendError, match="different contexts"):
        x + y
    a.compute(x.scale(2.0))
    with pytest.raises(BackendError, match="already computed"):
        a.input(randn(2))
    a.close()
    b.close()


# -- rerun: a graph computed again with new input data -----------------------------------------
def test_rerun_equals_a_fresh_graph_even_after_other_graphs_grew_the_allocator(backend):
    w = randn(16, 32)
    table = randn(50, 32)

    def build(ctx, x, idx):
        rows = ctx.input(table, constant=True).rows(ctx.input(idx, name="idx"))
        return (ctx.input(x, name="x") + rows).linear(ctx.input(w, constant=True)).silu()

    x1, i1 = randn(3, 32), np.array([1, 2, 3], np.int32)
    x2, i2 = randn(3, 32), np.array([49, 0, 7], np.int32)
    reused = backend.context(reusable=True)
    assert reused.reusable
    first = reused.compute(build(reused, x1, i1))[0]
    # A much bigger graph in between makes the shared allocator reallocate its buffer.
    with backend.context() as other:
        other.compute(other.input(randn(4096, 512)).linear(other.input(randn(512, 512))))
    again = reused.rerun({"x": x2, "idx": i2})[0]
    with backend.context() as fresh:
        expected = fresh.compute(build(fresh, x2, i2))[0]
    np.testing.assert_array_equal(again, expected)
    assert not np.array_equal(first, again)
    with pytest.raises(BackendError, match="out of range"):
        reused.rerun({"x": x1, "idx": np.array([1, 2, 50], np.int32)})
    with pytest.raises(BackendError, match="shape"):
        reused.rerun({"x": randn(4, 32), "idx": i1})
    with pytest.raises(BackendError, match="no input named"):
        reused.rerun({"x": x1, "idx": i1, "y": x1})
    with pytest.raises(BackendError, match="without new data for the inputs 'idx'"):
        reused.rerun({"x": x1})  # idx would keep the last step's data
    reused.close()
    with pytest.raises(BackendError):
        reused.rerun({"x": x1})


def test_a_reusable_graph_refuses_an_input_that_would_go_stale(backend):
    """rerun() refreshes named inputs only: an unnamed input must say it is constant."""
    with backend.context(reusable=True) as ctx:
        with pytest.raises(BackendError, match="needs a name"):
            ctx.input(randn(2, 2))
        with pytest.raises(BackendError, match="needs a name"):
            ctx.attention_mask(np.zeros((1, 2), np.float32))
        ctx.compute(ctx.input(randn(2, 2), constant=True) + ctx.input(randn(2, 2), name="x"))
    with backend.context() as plain:  # computed once: nothing to go stale
        plain.compute(plain.input(randn(2, 2)).scale(2.0))




def test_plain_contexts_cannot_rerun(backend):
    with backend.context() as ctx:
        ctx.compute(ctx.input(randn(2, 2), name="x").scale(2.0))
        with pytest.raises(BackendError, match="reusable"):
            ctx.rerun({"x": randn(2, 2)})


def test_flash_attention_equals_plain_attention():
    """With flash attention the cache keeps V as rows and ggml's fused kernel runs."""
    from pollama.kvcache import KVCache
    from pollama.nn import Batch

    results = {}
    for flash in (False, True):
        b = GGMLBackend(n_threads=2, flash_attention=flash)
        cache = KVCache(b, [0], n_cells=64, k_width=2 * 16, v_width=2 * 16, window=6)
        assert cache.v[0].shape == ((64, 32) if flash else (32, 64))
        outs = []
        for step, t in enumerate((5, 1, 1, 4)):
            start = sum((5, 1, 1, 4)[:step])
            q = np.random.default_rng(step).standard_normal((t, 4, 16)).astype(np.float32)
            kv = np.random.default_rng(100 + step).standard_normal((2, t, 2, 16)).astype(np.float32)
            with b.context() as ctx:
                cache.begin(ctx, Batch.single([1] * t, start))
                keys, values, mask = cache.update(ctx, 0, ctx.input(kv[0]), ctx.input(kv[1]))
                outs.append(ctx.compute(ctx.attention(ctx.input(q), keys, values, mask, 0.25, softcap=3.0))[0])
        results[flash] = np.concatenate(outs)
        b.close()
    # F16 accumulation inside the fused CPU kernel: agreement to F16 precision.
    np.testing.assert_allclose(results[True], results[False], atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize(
    "rope",
    [
        Rope(dims=16, base=10000.0, mode=RopeMode.NORMAL, freq_scale=0.25),
        Rope(dims=12, base=500000.0, mode=RopeMode.NEOX),
        Rope(dims=16, base=10000.0, mode=RopeMode.NORMAL, freq_scale=0.125, original_context=4096,
             ext_factor=1.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0),
        Rope(dims=16, base=1000000.0, mode=RopeMode.NEOX, freq_scale=0.25, original_context=8192,
             ext_factor=1.0, attn_factor=0.9, beta_fast=64.0, beta_slow=2.0),
    ],
    ids=["linear", "neox-partial", "yarn-normal", "yarn-neox"],
)
@pytest.mark.parametrize("factors", [False, True], ids=["", "freq-factors"])
def test_rope_scaling_and_factors_agree_with_torch(backend, rope, factors):
    """Linear scaling, YaRN and Llama 3.1 frequency factors: ggml's kernel and the reference agree."""
    from pollama.ml.torch.backend import TorchBackend

    x = randn(6, 2, 16)
    pos = np.array([0, 3, 100, 4000, 9000, 30000], dtype=np.int32)
    ff = (1.0 + np.arange(rope.dims // 2, dtype=np.float32)) if factors else None
    outs = []
    for b in (backend, TorchBackend()):
        with b.context() as ctx:
            f = ctx.input(ff) if ff is not None else None
            outs.append(ctx.compute(ctx.input(x).rope(ctx.input(pos), rope, f))[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(outs[0], x)  # it did rotate


def test_attention_accepts_v_permuted_by_the_caller(backend):
    """Without a cache (an encoder), V comes as [n, kv_heads, dv] and is permuted in place."""
    q, k, v = randn(3, 2, 4), randn(3, 2, 4), randn(3, 2, 4)
    with backend.context() as ctx:
        v_t = ctx.input(v).permute(1, 2, 0)  # [kv_heads, dv, n], innermost dim strided
        out = ctx.compute(ctx.attention(ctx.input(q), ctx.input(k), v_t, ctx.attention_mask(np.zeros((3, 3), np.float32)), 0.5))[0]
    s = np.einsum("thd,nhd->htn", q, k) * 0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("htn,nhd->thd", p, v).reshape(3, 8), rtol=1e-5, atol=1e-5)


def test_closed_backend_raises():
    b = GGMLBackend(n_threads=1)
    b.close()
    for call in (b.context, lambda: b.zeros((2, 2), GGMLType.F16)):
        with pytest.raises(BackendError, match="closed"):
            call()
