"""RoPE's cos/sin tables for the reference backend, computed the way ggml's CPU kernel computes
them (float32, same order of operations): one angle per position and dim pair (with YaRN's
ramp and frequency factors), and the multi-section ones (M-RoPE, vision).
"""

from __future__ import annotations

import math

import numpy as np

from pollama.ml.base import BackendError, Rope


def multi_rope_cos_sin(
    positions: np.ndarray, rope: Rope, slots: int, vision: bool, freq_factors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [seq, slots] for positions [4, seq] as ggml's CPU multi-section rope makes them.

    Slot i belongs to section t, h, w or e by i modulo the sections' sum; its angle is that
    component's position times base^(-2i/dims), the running product restarting at each
    section for VISION.
    """
    f32 = np.float32
    if rope.ext_factor != 0:
        raise BackendError("YaRN is not supported with multi-section rope")
    sections = rope.sections
    total = sum(sections)
    bounds = np.cumsum(sections)
    theta_scale = np.power(f32(rope.base), f32(-2.0) / f32(rope.dims), dtype=f32)
    running = positions.astype(f32).copy()  # [4, seq]: the running theta of each component
    theta = np.empty((positions.shape[1], slots), dtype=f32)
    for i in range(slots):
        sector = i % total
        component = int(np.searchsorted(bounds, sector, side="right"))
        if vision and sector in (0, *bounds[:3]):
            running[component] = positions[component].astype(f32)
        theta[:, i] = running[component]
        running = running * theta_scale
    if freq_factors is not None:
        theta = theta / freq_factors.astype(f32)
    angles = f32(rope.freq_scale) * theta
    angles64 = angles.astype(np.float64)
    mscale = f32(rope.attn_factor)
    return (np.cos(angles64).astype(f32) * mscale).astype(f32), (np.sin(angles64).astype(f32) * mscale).astype(f32)


def rope_cos_sin(positions: np.ndarray, rope: Rope, freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [seq, dims/2] (float32, mscale included) of each position, as ggml's CPU rope makes them."""
    f32 = np.float32
    dims = rope.dims
    half = dims // 2
    base, freq_scale = f32(rope.base), f32(rope.freq_scale)
    ext_factor, attn_factor = f32(rope.ext_factor), f32(rope.attn_factor)

    # ggml starts from the position and multiplies by base^(-2/dims) once per pair, in float32,
    # rather than raising to a power per pair: the rounding of that running product is part
    # of what the oracle has to reproduce at large positions.
    theta_scale = np.power(base, f32(-2.0) / f32(dims), dtype=f32)
    theta = np.empty((len(positions), half), dtype=f32)
    running = positions.astype(f32)
    for i in range(half):
        theta[:, i] = running
        running = running * theta_scale

    extrap = theta if freq_factors is None else theta / freq_factors.astype(f32)
    interp = freq_scale * extrap
    mscale = attn_factor
    if ext_factor != 0:
        low, high = _yarn_corr_dims(rope)
        i = np.arange(half, dtype=f32)
        y = (i - low) / max(f32(0.001), high - low)
        ramp_mix = (f32(1) - np.clip(y, f32(0), f32(1))) * ext_factor
        angles = interp * (f32(1) - ramp_mix) + extrap * ramp_mix
        mscale = f32(mscale * (f32(1) + f32(0.1) * np.log(f32(1) / freq_scale, dtype=f32)))
    else:
        angles = interp
    # cos/sin of the float32 angle evaluated in float64 and rounded: within an ulp of libm's cosf.
    angles64 = angles.astype(np.float64)
    cos = np.cos(angles64).astype(f32) * mscale
    sin = np.sin(angles64).astype(f32) * mscale
    return cos.astype(f32), sin.astype(f32)


def _yarn_corr_dims(rope: Rope) -> tuple[np.float32, np.float32]:
    """The dims where YaRN's ramp starts and ends (ggml_rope_yarn_corr_dims), in float32."""
    f32 = np.float32
    dims, base = rope.dims, f32(rope.base)

    def corr_dim(n_rot: float) -> np.float32:
        # the dim whose wavelength makes n_rot turns over the original context
        with np.errstate(divide="ignore"):  # original_context 0 gives -inf, as in ggml
            ratio = f32(rope.original_context) / (f32(n_rot) * f32(2) * f32(math.pi))
            return f32(dims) * np.log(ratio, dtype=f32) / (f32(2) * np.log(base, dtype=f32))

    start = np.floor(corr_dim(rope.beta_fast))
    end = np.ceil(corr_dim(rope.beta_slow))
    return max(f32(0), start), min(f32(dims - 1), end)
