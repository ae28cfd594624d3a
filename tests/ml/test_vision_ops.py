"""The ops the vision towers use, on both backends, against plain numpy written from the papers'
formulas (and transformers' Qwen2-VL rotary code for the multi-section RoPE)."""

from __future__ import annotations

import numpy as np
import pytest

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import BackendError, Rope, RopeMode
from pollama.ml.ggml.backend import GGMLBackend
from pollama.nn import attend

import torch
from pollama.ml.torch.backend import TorchBackend  # noqa: E402

RNG = np.random.default_rng(7)


@pytest.fixture(params=["ggml", "torch"])
def backend(request):
    b = GGMLBackend(n_threads=2) if request.param == "ggml" else TorchBackend()
    yield b
    b.close()


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def test_vision_rope_is_qwen2_vl_2d_rotary(backend):
    # Qwen2-VL's vision tower: head_dim 16; a quarter of the frequencies turn with the patch
    # row, a quarter with its column, each quarter from base^0 (VisionRotaryEmbedding(8)).
    seq, heads, head_dim, base = 6, 2, 16, 10000.0
    x = RNG.standard_normal((seq, heads, head_dim)).astype(np.float32)
    rows = np.array([0, 0, 1, 1, 2, 5], dtype=np.int32)
    cols = np.array([0, 1, 0, 1, 3, 4], dtype=np.int32)
    inv = 1.0 / base ** (np.arange(0, 8, 2, dtype=np.float64) / 8)
    freqs = np.concatenate([rows[:, None] * inv, cols[:, None] * inv], axis=-1)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    want = x * np.cos(emb) + rotate_half(x) * np.sin(emb)

    rope = Rope(dims=8, base=base, mode=RopeMode.VISION, sections=(4, 4, 0, 0))
    positions = np.concatenate([rows, cols, np.zeros(seq, np.int32), np.zeros(seq, np.int32)])
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(x).rope(ctx.input(positions), rope))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_mrope_is_qwen2_vl_multimodal_rotary(backend):
    # Qwen2-VL's text: mrope_section [2, 3, 3] of 8 frequency slots, doubled over the two halves.
    seq, heads, head_dim, base = 5, 3, 16, 1e6
    x = RNG.standard_normal((seq, heads, head_dim)).astype(np.float32)
    pos = np.array([[0, 1, 1, 1, 4], [0, 1, 1, 2, 4], [0, 1, 2, 1, 4]], dtype=np.int32)  # t, h, w
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = pos[:, :, None] * inv  # [3, seq, 8]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [3, seq, 16]
    chunks, start = [], 0
    for i, size in enumerate([2, 3, 3, 2, 3, 3]):
        chunks.append(emb[i % 3, :, start : start + size])
        start += size
    angle = np.concatenate(chunks, axis=-1)[:, None, :]
    want = x * np.cos(angle) + rotate_half(x) * np.sin(angle)

    rope = Rope(dims=head_dim, base=base, mode=RopeMode.MROPE, sections=(2, 3, 3, 0))
    positions = np.concatenate([pos.reshape(-1), np.zeros(seq, np.int32)])
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(x).rope(ctx.input(positions), rope))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_vision_rope_frequency_factors(backend):
    # Pixtral's column frequencies sit between the row ones: the same turn divided by a factor.
    seq, head_dim, base = 4, 8, 100.0
    x = RNG.standard_normal((seq, 1, head_dim)).astype(np.float32)
    rows, cols = np.array([0, 1, 2, 3], np.int32), np.array([3, 2, 1, 0], np.int32)
    factors = np.array([1.0, 1.0, 3.0, 3.0], dtype=np.float32)
    inv = 1.0 / base ** (np.arange(0, 4, 2, dtype=np.float64) / 4)
    freqs = np.concatenate([rows[:, None] * inv, cols[:, None] * inv / 3.0], axis=-1)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    want = x * np.cos(emb) + rotate_half(x) * np.sin(emb)
    rope = Rope(dims=4, base=base, mode=RopeMode.VISION, sections=(2, 2, 0, 0))
    positions = np.concatenate([rows, cols, np.zeros(2 * seq, np.int32)])
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(x).rope(ctx.input(positions), rope, ctx.input(factors)))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_multi_rope_checks_its_inputs(backend):
    x = np.zeros((3, 1, 8), np.float32)
    with backend.context() as ctx:
        t = ctx.input(x)
        with pytest.raises(BackendError, match="positions"):
            t.rope(ctx.input(np.zeros(3, np.int32)), Rope(dims=8, mode=RopeMode.MROPE, sections=(2, 2, 0, 0)))
        with pytest.raises(BackendError, match="sections"):
            t.rope(ctx.input(np.zeros(12, np.int32)), Rope(dims=8, mode=RopeMode.MROPE, sections=(4, 4, 4, 0)))
        with pytest.raises(BackendError, match="half of head_dim"):
            t.rope(ctx.input(np.zeros(12, np.int32)), Rope(dims=8, mode=RopeMode.VISION, sections=(2, 2, 0, 0)))


def test_concat_slice_sub_sigmoid_transpose(backend):
    a = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 2, 5)).astype(np.float32)
    with backend.context() as ctx:
        A, B = ctx.input(a), ctx.input(b)
        outs = ctx.compute(
            A.concat(B, 1), A.concat(A, -1), A.slice(1, 1, 3), A.slice(0, 2, 3), A.slice(2, 0, 2),
            A - A.slice(2, 0, 1), A.sigmoid(), A.quick_gelu(), A.reshape(12, 5).transpose(),
            A.permute(1, 0, 2).slice(0, 1, 2),
        )
    want = [
        np.concatenate([a, b], 1), np.concatenate([a, a], -1), a[:, 1:3], a[2:3], a[:, :, 0:2],
        a - a[:, :, 0:1], 1 / (1 + np.exp(-a)), a / (1 + np.exp(-1.702 * a)), a.reshape(12, 5).T,
        a.transpose(1, 0, 2)[1:2],
    ]
    for got, exp in zip(outs, want):
        assert got.shape == exp.shape
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    with backend.context() as ctx:
        A, B = ctx.input(a), ctx.input(b)
        with pytest.raises(BackendError):
            A.concat(B, 0)
        with pytest.raises(BackendError):
            A.slice(1, 3, 3)
        with pytest.raises(BackendError):
            A.slice(3, 0, 1)
        with pytest.raises(BackendError):
            A.transpose()


def test_linear_with_a_convolution_kernel_is_a_patch_embedding(backend, tmp_path):
    # A conv with stride = kernel over an image equals the kernel, flattened, applied to each
    # patch flattened in (channel, row, column) order.
    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf

    kernel = RNG.standard_normal((6, 3, 2, 2)).astype(np.float32)
    image = RNG.standard_normal((3, 4, 6)).astype(np.float32)
    patches = image.reshape(3, 2, 2, 3, 2).transpose(1, 3, 0, 2, 4).reshape(6, 12)  # [patches, c*kh*kw]
    want = np.einsum("ocij,pcij->po", kernel, patches.reshape(6, 3, 2, 2))
    path = tmp_path / "k.gguf"
    write_gguf(path, {"general.architecture": "test"}, [("k", kernel, GGMLType.F32, kernel.shape)])
    with GGUFFile(path) as f:
        weights = backend.load(f)
        with backend.context() as ctx:
            (got,) = ctx.compute(ctx.input(patches).linear(weights["k"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_linear_with_a_step_tensor_pools(backend):
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    pool = np.kron(np.eye(3), np.full((1, 2), 0.5)).astype(np.float32)  # mean of row pairs
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(x).transpose().linear(ctx.input(pool)).transpose())
    np.testing.assert_allclose(got, x.reshape(3, 2, 4).mean(1), rtol=1e-6, atol=1e-6)


def test_attend_full_and_masked(backend):
    t, n, heads, kv, d = 4, 5, 4, 2, 8
    q = RNG.standard_normal((t, heads, d)).astype(np.float32)
    k = RNG.standard_normal((n, kv, d)).astype(np.float32)
    v = RNG.standard_normal((n, kv, d)).astype(np.float32)
    mask = np.where(RNG.random((t, n)) < 0.3, -np.inf, 0).astype(np.float32)
    mask[:, 0] = 0
    for m in (None, mask):
        scores = np.einsum("thd,nhd->htn", q, np.repeat(k, heads // kv, axis=1)) / np.sqrt(d)
        if m is not None:
            scores = scores + m
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        want = np.einsum("htn,nhd->thd", w, np.repeat(v, heads // kv, axis=1)).reshape(t, heads * d)
        with backend.context() as ctx:
            (got,) = ctx.compute(attend(ctx, ctx.input(q), ctx.input(k), ctx.input(v), m))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
