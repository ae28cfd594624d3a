"""gpt-oss's two ops on both backends against transformers' own code: attention with sinks
(GptOss's eager_attention_forward) and the clamped SwiGLU (GptOssExperts._apply_gate)."""

from __future__ import annotations

import numpy as np
import pytest

from pollama.ml.ggml.backend import GGMLBackend

import torch
import transformers
from transformers.models.gpt_oss import modeling_gpt_oss as hf  # noqa: E402

from pollama.ml.torch.backend import TorchBackend  # noqa: E402

rng = np.random.default_rng(7)


def randn(*shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="module", params=["ggml", "ggml-flash", "torch"])
def backend(request):
    b = TorchBackend() if request.param == "torch" else GGMLBackend(n_threads=2, flash_attention=request.param == "ggml-flash")
    yield b
    b.close()


def hf_attention(q, k, v, mask, sinks, scale):
    """transformers' gpt-oss eager attention: q [t, h, d], k/v [n, hkv, d], mask [t, n] -> [t, h * d]."""
    h, hkv = q.shape[1], k.shape[1]
    module = torch.nn.Module()
    module.num_key_value_groups = h // hkv
    module.sinks = torch.tensor(sinks)
    module.training = False
    as_heads = lambda a: torch.tensor(a).permute(1, 0, 2)[None]  # [1, heads, seq, d]
    out, _ = hf.eager_attention_forward(module, as_heads(q), as_heads(k), as_heads(v), torch.tensor(mask)[None, None], scale)
    return out[0].reshape(q.shape[0], -1).numpy()


@pytest.mark.parametrize("sink_scale", [0.0, 3.0])
def test_attention_with_sinks_matches_transformers(backend, sink_scale):
    t, n, h, hkv, d = 5, 7, 4, 2, 16
    q, k, v = randn(t, h, d), randn(n, hkv, d), randn(n, hkv, d)
    sinks = randn(h, scale=sink_scale) + np.float32(sink_scale)  # large sinks take most of the attention
    mask = np.zeros((t, n), np.float32)
    for i in range(t):  # causal over the last t keys, one row sliding past its first two keys
        mask[i, n - t + i + 1:] = -np.inf
    mask[t - 1, :2] = -np.inf
    flash = backend.flash_attention
    with backend.context() as ctx:
        values = ctx.input(v) if flash else ctx.input(v).permute(1, 2, 0)
        q_, k_, m_, s_ = ctx.input(q), ctx.input(k), ctx.attention_mask(mask), ctx.input(sinks)
        out = ctx.attention(q_, k_, values, m_, 0.25, sinks=s_)
        # Rows in groups (several sequences in one batch) each get the sinks too.
        grouped = ctx.attention(q_, k_, values, m_, 0.25, sinks=s_, groups=[(0, 2), (2, 3)])
        got, got_grouped = ctx.compute(out, grouped)
    want = hf_attention(q, k, v, mask, sinks, 0.25)
    without = hf_attention(q, k, v, mask, np.full(h, -np.inf, np.float32), 0.25)
    tol = 8e-7  # measured: 2.4e-7 (torch), 1.6e-7 (ggml), 3.6e-7 (ggml's flash kernel, F32 K/V)
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    np.testing.assert_allclose(got_grouped, want, atol=tol, rtol=0)
    assert np.abs(want - without).max() > 10 * tol  # the sinks change the result


def test_sinks_shape_is_checked(backend):
    from pollama.ml.base import BackendError

    q, k, v = randn(2, 4, 8), randn(2, 2, 8), randn(2, 2, 8)
    with backend.context() as ctx:
        values = ctx.input(v) if backend.flash_attention else ctx.input(v).permute(1, 2, 0)
        with pytest.raises(BackendError, match="sinks"):
            ctx.attention(ctx.input(q), ctx.input(k), values, None, 0.5, sinks=ctx.input(randn(2)))


def test_swiglu_oai_matches_transformers(backend):
    gate, up = randn(6, 40, scale=6.0), randn(6, 40, scale=6.0)  # many beyond the clamp at 7
    assert (gate > 7).any() and (np.abs(up) > 7).any()
    experts = hf.GptOssExperts.__new__(hf.GptOssExperts)
    experts.alpha, experts.limit = 1.702, 7.0
    fused = np.empty((6, 80), np.float32)
    fused[:, 0::2], fused[:, 1::2] = gate, up  # transformers keeps gate and up interleaved
    want = experts._apply_gate(torch.tensor(fused)).numpy()
    with backend.context() as ctx:
        (got,) = ctx.compute(ctx.input(gate).swiglu_oai(ctx.input(up), 1.702, 7.0))
    np.testing.assert_allclose(got, want, rtol=5e-7, atol=5e-7)  # measured: 2e-7 relative (ggml), 0 (torch)
