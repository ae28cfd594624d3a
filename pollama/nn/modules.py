"""Layers written once against ml/: each holds weights named as in GGUF and applies them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from pollama.errors import ModelError
from pollama.ml.base import Context, Rope, RopeMode, Tensor


class Weights:
    """Loaded weights by GGUF name; a missing one is a ModelError naming it."""

    def __init__(self, tensors: Mapping[str, Tensor], source: str = "model"):
        self.tensors = tensors
        self.source = source

    def __getitem__(self, name: str) -> Tensor:
        tensor = self.tensors.get(name)
        if tensor is None:
            raise ModelError(f"{self.source}: missing tensor {name!r}")
        return tensor

    def get(self, name: str) -> Tensor | None:
        return self.tensors.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


class _WeightAndBias:
    """A weight kept in its GGUF type and an optional bias, read as `name.weight` and `name.bias`."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        self.weight = weight
        self.bias = bias

    @classmethod
    def load(cls, weights: Weights, name: str, **_):
        return cls(weights[f"{name}.weight"], weights.get(f"{name}.bias"))


class Linear(_WeightAndBias):
    """y = x W^T + b, W kept in its GGUF type (`name.weight`, optional `name.bias`)."""

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        return x.linear(self.weight, self.bias)


class ExpertLinear(_WeightAndBias):
    """One linear map per expert: `name.weight` [n_experts, out, in] (+ `name.bias` [n_experts, out])."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        if weight.ndim != 3:
            raise ModelError(f"expert weights must be [experts, out, in], got {list(weight.shape)}")
        super().__init__(weight, bias)

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Tensor, experts: Tensor) -> Tensor:
        """x [t, k or 1, in], experts int32 [t, k] -> [t, k, out]."""
        return x.linear_experts(self.weight, experts, self.bias)


class Embedding:
    """Row lookup in a [vocab, dim] table (any GGUF type)."""

    def __init__(self, weight: Tensor):
        self.weight = weight

    @classmethod
    def load(cls, weights: Weights, name: str, **_) -> Embedding:
        return cls(weights[f"{name}.weight"])

    def __call__(self, ids: Tensor) -> Tensor:
        return self.weight.rows(ids)


def _checked_eps(eps: float) -> float:
    # ggml asserts eps >= 0 when the graph runs (a NaN fails it too), aborting the process.
    if not (math.isfinite(eps) and eps >= 0):
        raise ModelError(f"a norm's epsilon must be a finite number not below zero, got {eps!r}")
    return eps


class RMSNorm:
    """x / rms(x) * weight."""

    def __init__(self, weight: Tensor, eps: float):
        self.weight = weight
        self.eps = _checked_eps(eps)

    @classmethod
    def load(cls, weights: Weights, name: str, eps: float, **_) -> RMSNorm:
        return cls(weights[f"{name}.weight"], eps)

    def __call__(self, x: Tensor) -> Tensor:
        return x.rms_norm(self.eps) * self.weight


class LayerNorm:
    """(x - mean) / std * weight + bias."""

    def __init__(self, weight: Tensor, bias: Tensor | None, eps: float):
        self.weight = weight
        self.bias = bias
        self.eps = _checked_eps(eps)

    @classmethod
    def load(cls, weights: Weights, name: str, eps: float, **_) -> LayerNorm:
        return cls(weights[f"{name}.weight"], weights.get(f"{name}.bias"), eps)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.layer_norm(self.eps) * self.weight
        return x + self.bias if self.bias is not None else x


@dataclass(frozen=True)
class RopeScaling:
    """RoPE context extension as GGUF describes it (`<arch>.rope.scaling.*`)."""

    kind: str = "none"  # none | linear | yarn
    factor: float = 1.0
    original_context: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0


def make_rope(dims: int, base: float, mode: RopeMode, scaling: RopeScaling = RopeScaling()) -> Rope:
    """The Rope parameters for a head, with linear or YaRN scaling applied."""
    if scaling.kind == "none" or scaling.factor in (0.0, 1.0):
        return Rope(dims=dims, base=base, mode=mode)
    freq_scale = 1.0 / scaling.factor
    if scaling.kind == "linear":
        return Rope(dims=dims, base=base, mode=mode, freq_scale=freq_scale)
    if scaling.kind == "yarn":
        # ext_factor 1 turns YaRN's frequency ramp on; ggml applies the 0.1*ln(s)+1 magnitude
        # correction itself, so attn_factor carries only a model's extra factor.
        return Rope(
            dims=dims, base=base, mode=mode, freq_scale=freq_scale,
            original_context=scaling.original_context, ext_factor=1.0,
            attn_factor=scaling.attn_factor, beta_fast=scaling.beta_fast, beta_slow=scaling.beta_slow,
        )
    raise ModelError(f"unsupported rope scaling type {scaling.kind!r}")


def attention(ctx: Context, q: Tensor, k: Tensor, v: Tensor, cache, layer: int, scale: float | None = None,
              softcap: float = 0.0, sinks: Tensor | None = None) -> Tensor:
    """Causal (or sliding-window) self-attention of this step's q over the cached k/v.

    q [t, heads, d], k [t, kv_heads, d], v [t, kv_heads, dv] -> [t, heads * dv]. The cache
    stores k and v for the step's cells and returns every visible cell with its mask.
    `sinks` [heads]: per-head logits that join the softmax with no value (gpt-oss).
    """
    keys, values, mask = cache.update(ctx, layer, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return ctx.attention(q, keys, values, mask, scale, softcap, groups=cache.groups(layer), sinks=sinks)


def attention_shared(ctx: Context, q: Tensor, cache, kv_layer: int, kv_heads: int, scale: float | None = None) -> Tensor:
    """Attention of this step's q [t, heads, d] over the K/V an earlier layer (`kv_layer`) stored
    in this step (KV sharing, as in Gemma 3n and 4) -> [t, heads * dv]."""
    keys, values, mask = cache.read(ctx, kv_layer, kv_heads)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return ctx.attention(q, keys, values, mask, scale, 0.0, groups=cache.groups(kv_layer))


def attend(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask=None, scale: float | None = None) -> Tensor:
    """Attention without a cache (an encoder's, over one image): q [t, heads, d], k and v
    [n, kv_heads, d] -> [t, heads * d]. `mask` is an additive float32 array [t, n] (0 where a
    query may look, -inf where not), or None for full attention."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    # The fused kernel never holds the [heads, t, n] scores: an image of thousands of patches
    # would need gigabytes for them. K and V stay float32, so its sums are float32 too.
    mask_t = None if mask is None else ctx.attention_mask(mask)
    return ctx.attention(q, k, v, mask_t, scale, flash=True)
