"""Exact (erf) GELU on both backends against math.erf.

BERT's "gelu" is the exact one; the tanh approximation that `gelu()` computes differs from it
by up to about 5e-4, which is more than the 1e-3 budget of a deep encoder allows once it
compounds over layers. So the test also checks the two are told apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollama.ml.ggml.backend import GGMLBackend

import torch
from pollama.ml.torch.backend import TorchBackend  # noqa: E402


def reference(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64).ravel()]).reshape(x.shape)


@pytest.fixture(params=["ggml", "torch"])
def backend(request):
    b = GGMLBackend(n_threads=2) if request.param == "ggml" else TorchBackend()
    yield b
    b.close()


def test_gelu_erf_matches_math_erf(backend):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 481), rng.standard_normal(302) * 3]).astype(np.float32).reshape(3, -1)
    with backend.context() as ctx:
        X = ctx.input(x)
        exact, approx = ctx.compute(X.gelu_erf(), X.gelu())
    want = reference(x)
    assert exact.shape == x.shape and exact.dtype == np.float32
    np.testing.assert_allclose(exact, want, rtol=1e-6, atol=1e-6)
    # The tanh approximation is measurably different: the exact op really is another kernel.
    assert np.abs(approx - want).max() > 1e-4


def test_gelu_erf_on_a_permuted_tensor(backend):
    # Unary ops take non-contiguous inputs (a view) as well.
    x = np.arange(-6, 6, 0.5, dtype=np.float32).reshape(4, 6)
    with backend.context() as ctx:
        (out,) = ctx.compute(ctx.input(x).permute(1, 0).gelu_erf())
    np.testing.assert_allclose(out, reference(x.T), rtol=1e-6, atol=1e-6)


def test_exact_gelu_is_the_tanh_formula_in_float32():
    # ggml's own GELU reads an F16 table (llama.cpp's numbers); exact_gelu computes the formula.
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-12, 12, 481), rng.standard_normal(302) * 3]).astype(np.float32).reshape(3, -1)
    up = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    for exact in (True, False):
        b = GGMLBackend(n_threads=2, exact_gelu=exact)
        try:
            with b.context() as ctx:
                X, U = ctx.input(x), ctx.input(up)
                gelu, geglu = ctx.compute(X.gelu(), X.geglu(U))
        finally:
            b.close()
        err = np.abs(gelu - want).max()
        if exact:
            assert err < 2e-6
            np.testing.assert_allclose(geglu, want * up, rtol=1e-5, atol=1e-5)
        else:
            assert err > 1e-4  # the table's F16 rounding: the two are really different
