"""The reference backend: eager PyTorch ops on float32 weights.

It is the oracle the ggml backend is tested against, so it favours plain, checkable code over
speed: weights are dequantized to float32 at load, every op runs at once, and RoPE's angles are
computed the way ggml's CPU kernel computes them (float32, same order of operations).

It is also deliberately as strict as the ggml backend: misuse that ggml would reject (tensors
of two contexts in one op, an op on weights alone, more than 4 dims, a mask not made by
`attention_mask`, a second `compute`) raises here too, so model code that runs on the
reference also runs on ggml.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import (
    Backend, BackendError, Context, Recorder, Rope, RopeMode, Tensor, check_concat, check_linear_experts,
    check_rope_sections, check_slice,
)
from pollama.ml.torch.quants import dequantize

MAX_DIMS = 4  # ggml's GGML_MAX_DIMS: a shape the ggml backend could not hold is refused here too

_TORCH_TYPES = {torch.float32: GGMLType.F32, torch.int32: GGMLType.I32}
_NP_TYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int32): torch.int32}


class _Owner:
    """What a tensor's storage belongs to (a context or a backend's weights); can be closed."""

    def __init__(self, what: str):
        self.alive = True
        self.message = f"tensor used after its {what} was closed"
        self.tensors: weakref.WeakSet[TorchTensor] = weakref.WeakSet()

    def kill(self) -> None:
        self.alive = False
        # Drop the data now, even if callers still hold the wrappers: that is what frees memory.
        for tensor in list(self.tensors):
            tensor._t = None
        self.tensors.clear()


class TorchTensor(Tensor):
    """A torch.Tensor (float32 or int32) in PyTorch order, owned by a context or a backend."""

    __slots__ = ("_t", "shape", "dtype", "owner", "ctx", "is_mask")

    def __init__(self, t: torch.Tensor, owner: _Owner, ctx: TorchContext | None, is_mask: bool = False):
        if t.dtype not in _TORCH_TYPES:
            raise BackendError(f"torch backend holds float32 or int32 tensors, got {t.dtype}")
        self._t = t
        # Kept apart from _t so they still read after the data is freed (for messages).
        self.shape = tuple(t.shape)
        self.dtype = _TORCH_TYPES[t.dtype]
        self.owner = owner
        self.ctx = ctx  # the step context that made it; None for persistent tensors
        self.is_mask = is_mask  # made by Context.attention_mask
        owner.tensors.add(self)

    @property
    def t(self) -> torch.Tensor:
        """The wrapped torch.Tensor (raises once its owner is closed)."""
        if not self.owner.alive:
            raise BackendError(self.owner.message)
        return self._t

    def __repr__(self) -> str:
        state = "" if self.owner.alive else ", closed"
        return f"TorchTensor({list(self.shape)}, {self.dtype.name}{state})"

    # -- helpers ----------------------------------------------------------------------------
    def _step(self, *others: Tensor | None) -> TorchContext:
        """The open context an op on self and others belongs to, after checking them."""
        ctx = None
        for x in (self, *others):
            if x is None:
                continue
            if not isinstance(x, TorchTensor):
                raise BackendError(f"expected a torch backend tensor, got {type(x).__name__}")
            if not x.owner.alive:
                raise BackendError(x.owner.message)
            if x.ctx is not None:
                if ctx is None:
                    ctx = x.ctx
                elif x.ctx is not ctx:
                    raise BackendError("tensors from two different contexts used in one op")
        # The ggml backend builds every op in a step's graph; an op on weights alone has none.
        if ctx is None:
            raise BackendError("an op on persistent tensors only needs a step context: use ctx.view() or an input")
        ctx._check_open()
        return ctx

    def _float(self, op: str) -> None:
        if self.dtype != GGMLType.F32:
            raise BackendError(f"{op} needs a float32 tensor, got {self.dtype.name} {list(self.shape)}")

    def _unary(self, op: str, fn) -> TorchTensor:
        ctx = self._step()
        self._float(op)
        return ctx._new(fn(self._t))

    # -- linear algebra ---------------------------------------------------------------------
    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight.T (+ bias): x [..., in], weight [out, in] (dequantized to float32)."""
        ctx = self._step(weight, bias)
        self._float("linear")
        if not 2 <= weight.ndim <= 4 or weight.dtype != GGMLType.F32:
            raise BackendError(f"linear weight must be a 2-D to 4-D float tensor, got {weight.dtype.name} {list(weight.shape)}")
        if math.prod(weight.shape[1:]) != self.shape[-1]:
            raise BackendError(f"linear: input {list(self.shape)} does not match weight {list(weight.shape)}")
        if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != GGMLType.F32):
            raise BackendError(f"linear bias {bias.dtype.name} {list(bias.shape)} does not match weight {list(weight.shape)}")
        w = weight._t.reshape(weight.shape[0], -1)  # a convolution kernel as [out, channels * kh * kw]
        return ctx._new(F.linear(self._t, w, None if bias is None else bias._t))

    def rows(self, index: Tensor) -> Tensor:
        """Gather rows: [n, d] by int32 [t] -> [t, d]; per batch, [b, n, d] by int32 [b, k] -> [b, k, d]."""
        ctx = self._step(index)
        self._float("rows")
        if self.ndim not in (2, 3):
            raise BackendError(f"rows() needs a 2-D table (or 3-D, per batch), got {list(self.shape)}")
        if index.dtype != GGMLType.I32 or index.ndim != self.ndim - 1:
            raise BackendError(f"rows() of a {list(self.shape)} table needs a {self.ndim - 1}-D int32 index, "
                               f"got {index.dtype.name} {list(index.shape)}")
        if self.ndim == 3 and index.shape[0] != self.shape[0]:
            raise BackendError(f"rows(): index {list(index.shape)} does not have the {self.shape[0]} batches of {list(self.shape)}")
        idx = index._t.long()
        n = self.shape[-2]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise BackendError(f"rows(): index out of range [0, {n}): {idx.tolist()}")
        if self.ndim == 2:
            return ctx._new(self._t.index_select(0, idx))
        return ctx._new(torch.gather(self._t, 1, idx[:, :, None].expand(-1, -1, self.shape[2])))

    def linear_experts(self, weight: Tensor, experts: Tensor, bias: Tensor | None = None) -> Tensor:
        """x [t, k or 1, in] through weight[experts[i, j]] [out, in] (+ bias[experts[i, j]]) -> [t, k, out]."""
        ctx = self._step(weight, experts, bias)
        check_linear_experts(self, weight, experts, bias)
        if weight.dtype != GGMLType.F32:
            raise BackendError(f"linear_experts weights must be float (dequantized at load), got {weight.dtype.name}")
        ids = experts._t.long()
        n_experts = weight.shape[0]
        if int(ids.min()) < 0 or int(ids.max()) >= n_experts:
            raise BackendError(f"linear_experts: experts out of range [0, {n_experts}): {ids.tolist()}")
        t, k = ids.shape
        x = self._t.expand(t, k, self.shape[2])
        out = torch.zeros(t, k, weight.shape[1], dtype=torch.float32, device=x.device)
        # One matmul per chosen expert over the rows that chose it: the others are never read.
        for e in torch.unique(ids).tolist():
            chosen = ids == e  # [t, k]
            y = x[chosen] @ weight._t[e].T
            out[chosen] = y + bias._t[e] if bias is not None else y
        return ctx._new(out)

    def top_k(self, k: int) -> Tensor:
        """Indices of the k largest values along the last dim, largest first (int32)."""
        ctx = self._step()
        self._float("top_k")
        n = self.shape[-1]
        if not isinstance(k, int) or not 0 < k <= n:
            raise BackendError(f"top_k({k!r}) of {n} values")
        return ctx._new(torch.topk(self._t, k, dim=-1, largest=True, sorted=True).indices.to(torch.int32))

    # -- elementwise ------------------------------------------------------------------------
    def _binary(self, other: Tensor, op: str, fn) -> TorchTensor:
        ctx = self._step(other)
        if self.dtype != GGMLType.F32 or other.dtype != GGMLType.F32:
            raise BackendError(f"{op} needs float32 tensors, got {self.dtype.name} and {other.dtype.name}")
        # ggml's rule, not numpy's: only `other` broadcasts, and the result has self's shape.
        if other.ndim > self.ndim or any(
            o != 1 and o != s for o, s in zip(reversed(other.shape), reversed(self.shape))
        ):
            raise BackendError(f"{op}: shape {list(other.shape)} does not broadcast to {list(self.shape)}")
        return ctx._new(fn(self._t, other._t))

    def __add__(self, other: Tensor) -> Tensor:
        """Sum; `other` broadcasts when each of its dims is 1 or equal to ours."""
        return self._binary(other, "add", torch.add)

    def __mul__(self, other: Tensor) -> Tensor:
        """Product; `other` broadcasts when each of its dims is 1 or equal to ours."""
        return self._binary(other, "mul", torch.mul)

    def __sub__(self, other: Tensor) -> Tensor:
        """Difference; `other` broadcasts when each of its dims is 1 or equal to ours."""
        return self._binary(other, "sub", torch.sub)

    def __truediv__(self, other: Tensor) -> Tensor:
        """Quotient; `other` broadcasts when each of its dims is 1 or equal to ours."""
        return self._binary(other, "div", torch.div)

    def scale(self, factor: float) -> Tensor:
        """Multiply by a constant."""
        if not isinstance(factor, numbers.Real):
            raise BackendError(f"scale factor must be a number, got {type(factor).__name__}")
        return self._unary("scale", lambda t: t * float(factor))

    def silu(self) -> Tensor:
        """x * sigmoid(x)."""
        return self._unary("silu", F.silu)

    def gelu(self) -> Tensor:
        """GELU, tanh approximation."""
        return self._unary("gelu", lambda t: F.gelu(t, approximate="tanh"))

    def gelu_erf(self) -> Tensor:
        """GELU, exact (erf)."""
        return self._unary("gelu_erf", F.gelu)

    def tanh(self) -> Tensor:
        """Hyperbolic tangent."""
        return self._unary("tanh", torch.tanh)

    def sigmoid(self) -> Tensor:
        """1 / (1 + exp(-x))."""
        return self._unary("sigmoid", torch.sigmoid)

    def swiglu_oai(self, up: Tensor, alpha: float, limit: float) -> Tensor:
        """g * sigmoid(alpha g) * (u + 1), g = min(self, limit), u = clamp(up, -limit, limit)."""
        ctx = self._step(up)
        if self.dtype != GGMLType.F32 or up.dtype != GGMLType.F32 or self.shape != up.shape:
            raise BackendError(f"swiglu_oai needs two float32 tensors of one shape, got {list(self.shape)} and {list(up.shape)}")
        g = self._t.clamp(max=float(limit))
        u = up._t.clamp(min=-float(limit), max=float(limit))
        return ctx._new(g * torch.sigmoid(g * float(alpha)) * (u + 1))

    # -- reductions -------------------------------------------------------------------------
    def softmax(self) -> Tensor:
        """Softmax over the last dim."""
        return self._unary("softmax", lambda t: torch.softmax(t, dim=-1))

    def sum_rows(self) -> Tensor:
        """Sum over the last dim, kept: [..., n] -> [..., 1]."""
        return self._unary("sum_rows", lambda t: t.sum(dim=-1, keepdim=True))

    # -- normalization ----------------------------------------------------------------------
    def rms_norm(self, eps: float) -> Tensor:
        """x / sqrt(mean(x^2) + eps) over the last dim, in float32."""
        eps = _eps(eps)
        return self._unary("rms_norm", lambda t: t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps))

    def layer_norm(self, eps: float) -> Tensor:
        """(x - mean) / sqrt(var + eps) over the last dim, without affine parameters."""
        eps = _eps(eps)
        return self._unary("layer_norm", lambda t: F.layer_norm(t, t.shape[-1:], eps=eps))

    # -- shape ------------------------------------------------------------------------------
    def reshape(self, *shape: int) -> Tensor:
        """Same elements in a new shape; one dim may be -1 (torch semantics)."""
        ctx = self._step()
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        total = math.prod(self.shape)
        new = _resolve_shape(shape, total)
        if math.prod(new) != total:
            raise BackendError(f"cannot reshape {list(self.shape)} to {list(shape)}")
        return ctx._new(self._t.reshape(new))

    def permute(self, *dims: int) -> Tensor:
        """Reorder dims like torch.permute (a view)."""
        ctx = self._step()
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        n = self.ndim
        if sorted(dims) != list(range(n)):
            raise BackendError(f"permute{tuple(dims)} is not a permutation of {n} dims")
        return ctx._new(self._t.permute(*dims))

    def contiguous(self) -> Tensor:
        """A contiguous copy (or self when already contiguous)."""
        ctx = self._step()
        if self._t.is_contiguous():
            return self
        return ctx._new(self._t.contiguous())

    def concat(self, other: Tensor, dim: int) -> Tensor:
        """Join two float32 tensors along `dim`."""
        ctx = self._step(other)
        dim = check_concat(self, other, dim)
        return ctx._new(torch.cat((self._t, other._t), dim=dim))

    def slice(self, dim: int, start: int, stop: int) -> Tensor:
        """Elements [start, stop) along `dim`, contiguous."""
        ctx = self._step()
        dim = check_slice(self, dim, start, stop)
        return ctx._new(self._t.narrow(dim, start, stop - start).contiguous())

    # -- position ---------------------------------------------------------------------------
    def rope(self, positions: Tensor, rope: Rope, freq_factors: Tensor | None = None) -> Tensor:
        """Rotate x [seq, heads, head_dim] by positions int32 [seq] (ggml_rope_ext semantics)."""
        ctx = self._step(positions, freq_factors)
        self._float("rope")
        if self.ndim != 3:
            raise BackendError(f"rope needs x [seq, heads, head_dim], got {list(self.shape)}")
        seq, _, head_dim = self.shape
        n_pos = 4 * seq if rope.mode.multi else seq
        if positions.dtype != GGMLType.I32 or positions.shape != (n_pos,):
            raise BackendError(f"rope positions must be int32 [{n_pos}], got {positions.dtype.name} {list(positions.shape)}")
        dims = rope.dims
        if not (isinstance(dims, numbers.Integral) and 0 < dims <= head_dim and dims % 2 == 0):
            raise BackendError(f"rope dims {dims} invalid for head_dim {head_dim}: need an even number in (0, {head_dim}]")
        if rope.mode.multi:
            return self._rope_multi(ctx, positions, rope, freq_factors)
        if rope.mode not in (RopeMode.NORMAL, RopeMode.NEOX):
            raise BackendError(f"rope mode {rope.mode!r} is not supported")
        half = dims // 2
        factors = None
        if freq_factors is not None:
            if freq_factors.dtype != GGMLType.F32 or freq_factors.shape != (half,):
                raise BackendError(
                    f"rope frequency factors must be float32 [{half}], got {freq_factors.dtype.name} {list(freq_factors.shape)}"
                )
            factors = freq_factors._t.detach().cpu().numpy()
        cos, sin = rope_cos_sin(positions._t.detach().cpu().numpy(), rope, factors)
        device = self._t.device
        cos = torch.from_numpy(cos).to(device)[:, None, :]  # [seq, 1, half]: same for every head
        sin = torch.from_numpy(sin).to(device)[:, None, :]

        x = self._t
        rotated, rest = x[..., :dims], x[..., dims:]
        if rope.mode == RopeMode.NORMAL:
            pairs = rotated.reshape(seq, -1, half, 2)
            x0, x1 = pairs[..., 0], pairs[..., 1]
        else:
            x0, x1 = rotated[..., :half], rotated[..., half:]
        y0 = x0 * cos - x1 * sin
        y1 = x0 * sin + x1 * cos
        if rope.mode == RopeMode.NORMAL:
            out = torch.stack((y0, y1), dim=-1).reshape(rotated.shape)
        else:
            out = torch.cat((y0, y1), dim=-1)
        return ctx._new(torch.cat((out, rest), dim=-1) if dims < head_dim else out)


    def _rope_multi(self, ctx, positions: Tensor, rope: Rope, freq_factors: Tensor | None) -> Tensor:
        """ggml_rope_multi: each frequency slot turns by the position component its section names."""
        seq, _, head_dim = self.shape
        check_rope_sections(rope, head_dim)
        vision = rope.mode == RopeMode.VISION
        slots = head_dim // 2 if vision else rope.dims // 2
        factors = None
        if freq_factors is not None:
            if freq_factors.dtype != GGMLType.F32 or freq_factors.shape != (slots,):
                raise BackendError(f"rope frequency factors must be float32 [{slots}], got {list(freq_factors.shape)}")
            factors = freq_factors._t.detach().cpu().numpy()
        pos = positions._t.detach().cpu().numpy().reshape(4, seq)
        cos, sin = multi_rope_cos_sin(pos, rope, slots, vision, factors)
        device = self._t.device
        cos = torch.from_numpy(cos).to(device)[:, None, :]
        sin = torch.from_numpy(sin).to(device)[:, None, :]
        x = self._t
        # VISION pairs (i, i + dims) over the whole head; MROPE pairs (i, i + dims/2) as NEOX,
        # and dims past rope.dims pass through.
        span = 2 * slots
        x0, x1, rest = x[..., :slots], x[..., slots:span], x[..., span:]
        out = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return ctx._new(torch.cat((out, rest), dim=-1) if span < head_dim else out)


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


def _eps(eps) -> float:
    if not isinstance(eps, numbers.Real) or not eps >= 0:
        raise BackendError(f"eps must be a non-negative number, got {eps!r}")
    return float(eps)


def _resolve_shape(shape: Sequence, total: int) -> tuple[int, ...]:
    """A shape of 1 to 4 positive dims, with one -1 filled in like torch.reshape."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise BackendError(f"shape must be integers, got {shape!r}") from None
    if not 1 <= len(shape) <= MAX_DIMS:
        raise BackendError(f"shape {list(shape)} must have 1 to {MAX_DIMS} dims")
    if shape.count(-1) == 1:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or total % known:
            raise BackendError(f"cannot infer -1 in {list(shape)} for {total} elements")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if any(s <= 0 for s in shape):
        raise BackendError(f"invalid shape {list(shape)}: dims must be positive")
    return shape


class TorchContext(Context, _Owner):
    """One step; every op has already run by the time it returns."""

    def __init__(self, backend: TorchBackend):
        _Owner.__init__(self, "context")
        self.backend = backend
        self.computed = False

    def _check_open(self) -> None:
        if not self.alive:
            raise BackendError("context used after it was closed")
        if self.computed:
            # A ggml step is one graph, computed once; the reference keeps the same contract.
            raise BackendError("context already computed: make a new one for the next step")

    def _new(self, t: torch.Tensor, is_mask: bool = False) -> TorchTensor:
        if t.dim() > MAX_DIMS:
            raise BackendError(f"result {list(t.shape)} has more than {MAX_DIMS} dims")
        return TorchTensor(t, self, self, is_mask)

    def _from_numpy(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        if not 1 <= array.ndim <= MAX_DIMS or array.size == 0:
            raise BackendError(f"inputs must have 1 to {MAX_DIMS} non-empty dims, got shape {array.shape}")
        # A copy: the caller may reuse its array once input() returns.
        return torch.tensor(array, dtype=dtype, device=self.backend.device)

    def input(self, array: np.ndarray, name: str | None = None) -> Tensor:
        """An input tensor from a float32 or int32 numpy array (copied)."""
        self._check_open()
        if not isinstance(array, np.ndarray):
            raise BackendError(f"inputs must be numpy arrays, got {type(array).__name__}")
        dtype = _NP_TYPES.get(array.dtype)
        if dtype is None:
            raise BackendError(f"inputs must be float32 or int32 arrays, got {array.dtype}")
        return self._new(self._from_numpy(array, dtype))

    def attention_mask(self, mask: np.ndarray, name: str | None = None) -> Tensor:
        """An additive mask [queries, keys] (0 or -inf) as a float32 tensor."""
        self._check_open()
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise BackendError(f"attention mask must be a 2-D array [queries, keys], got {getattr(mask, 'shape', mask)!r}")
        if not np.issubdtype(mask.dtype, np.floating):
            raise BackendError(f"attention mask must be a float array, got {mask.dtype}")
        return self._new(self._from_numpy(mask, torch.float32), is_mask=True)

    def attention(
        self, q: Tensor, k: Tensor, v_t: Tensor, mask: Tensor, scale: float, softcap: float = 0.0, groups=None,
        flash: bool | None = None, sinks: Tensor | None = None,
    ) -> Tensor:
        """softmax(q k^T * scale [softcapped] + mask) v with grouped-query heads -> [t, heads * dv].

        Rows never mix here, so `groups` (kept by ggml for its summation order) change nothing.
        """
        self._check_open()
        if not isinstance(q, TorchTensor):
            raise BackendError(f"expected a torch backend tensor, got {type(q).__name__}")
        q._step(k, v_t, mask, sinks)
        if q.ndim != 3 or k.ndim != 3 or v_t.ndim != 3:
            raise BackendError(
                f"attention needs q [t,h,d], k [n,hkv,d], v_t [hkv,dv,n]; got {list(q.shape)}, {list(k.shape)}, {list(v_t.shape)}"
            )
        if flash:  # V given as rows [n, hkv, dv], as for a flash kernel (here the same arithmetic)
            v_t = v_t.permute(1, 2, 0)
        (t, h, d), (n, hkv, dk), (hkv_v, dv, nv) = q.shape, k.shape, v_t.shape
        if dk != d or nv != n or hkv_v != hkv or h % hkv:
            raise BackendError(f"attention shapes do not fit: q {list(q.shape)}, k {list(k.shape)}, v_t {list(v_t.shape)}")
        v = v_t.permute(2, 0, 1)  # [n, hkv, dv]
        if mask is not None and (not mask.is_mask or mask.shape != (t, n)):
            raise BackendError(f"attention mask must come from attention_mask() with shape [{t}, {n}], got {list(mask.shape)}")
        if q.dtype != GGMLType.F32 or k.dtype != GGMLType.F32 or v_t.dtype != GGMLType.F32:
            raise BackendError(f"attention types: q {q.dtype.name}, k {k.dtype.name}, v {v_t.dtype.name}")
        if not isinstance(scale, numbers.Real) or not isinstance(softcap, numbers.Real) or softcap < 0:
            raise BackendError(f"attention scale must be a number and softcap >= 0, got {scale!r}, {softcap!r}")

        if sinks is not None and (sinks.dtype != GGMLType.F32 or sinks.shape != (h,)):
            raise BackendError(f"attention sinks must be float32 [{h}], got {sinks.dtype.name} {list(sinks.shape)}")

        group = h // hkv
        # Query head j reads kv head j // group: split heads as [hkv, group] instead of copying k/v.
        qg = q._t.reshape(t, hkv, group, d)
        scores = torch.einsum("tkgd,nkd->kgtn", qg, k._t) * float(scale)  # [hkv, group, t, n]
        if softcap > 0:
            scores = torch.tanh(scores / float(softcap)) * float(softcap)
        if mask is not None:
            scores = scores + mask._t
        # A row masked everywhere has max -inf; shifting by 0 instead gives exp() = 0 and a
        # zero output rather than NaN (as ggml's flash attention does).
        row_max = scores.amax(dim=-1, keepdim=True)
        sink = None
        if sinks is not None:  # one more logit per head in each row's softmax, with no value
            sink = sinks._t.reshape(hkv, group, 1, 1)
            row_max = torch.maximum(row_max, sink)
        row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
        weights = torch.exp(scores - row_max)
        total = weights.sum(dim=-1, keepdim=True)
        if sink is not None:
            total = total + torch.exp(sink - row_max)
        weights = weights / torch.where(total == 0, torch.ones_like(total), total)
        out = torch.einsum("kgtn,nkv->tkgv", weights, v._t)  # [t, hkv, group, dv]
        return self._new(out.reshape(t, h * dv))

    def view(self, tensor: Tensor, start: int, length: int) -> Tensor:
        """Rows [start, start+length) of a persistent tensor along dim 0, sharing its storage."""
        self._check_open()
        if not isinstance(tensor, TorchTensor) or tensor.ctx is not None:
            raise BackendError("view() takes a persistent tensor (a cache)")
        if not tensor.owner.alive:
            raise BackendError(tensor.owner.message)
        start, length = int(start), int(length)
        if not (0 <= start and 0 < length and start + length <= tensor.shape[0]):
            raise BackendError(f"view rows [{start}, {start + length}) outside [0, {tensor.shape[0]})")
        return self._new(tensor._t.narrow(0, start, length))

    def store(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        """Write rows now: cache[cells[i]] = values[i], values reshaped to the cache's row shape."""
        self._check_open()
        if not isinstance(values, TorchTensor):
            raise BackendError(f"expected a torch backend tensor, got {type(values).__name__}")
        values._step(cells)
        if not isinstance(cache, TorchTensor) or cache.ctx is not None or not cache.owner.alive:
            raise BackendError("store() writes into a live persistent tensor (a cache)")
        t = values.shape[0]
        if cells.dtype != GGMLType.I32 or cells.ndim != 1 or cells.shape[0] != t:
            raise BackendError(f"store: cells must be int32 [{t}], got {cells.dtype.name} {list(cells.shape)}")
        if values.dtype != GGMLType.F32:
            raise BackendError(f"store: values must be float32, got {values.dtype.name}")
        row_shape = cache.shape[1:]
        if math.prod(values.shape[1:]) != math.prod(row_shape):
            raise BackendError(f"store: rows of {list(values.shape[1:])} do not fit cache rows of {list(row_shape)}")
        idx = cells._t.long()
        n = cache.shape[0]
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise BackendError(f"store: cells out of range [0, {n}): {idx.tolist()}")
        cache._t.index_copy_(0, idx, values._t.reshape(t, *row_shape))

    def store_columns(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        """Write columns now: cache[:, cells[i]] = values[i]; cache [width, n_cells]."""
        self._check_open()
        if not isinstance(values, TorchTensor):
            raise BackendError(f"expected a torch backend tensor, got {type(values).__name__}")
        values._step(cells)
        if not isinstance(cache, TorchTensor) or cache.ctx is not None or not cache.owner.alive or cache.ndim != 2:
            raise BackendError("store_columns() writes into a live persistent 2-D tensor (a cache)")
        width, n = cache.shape
        t = values.shape[0]
        if cells.dtype != GGMLType.I32 or cells.shape != (t,):
            raise BackendError(f"store_columns: cells must be int32 [{t}], got {cells.dtype.name} {list(cells.shape)}")
        if values.dtype != GGMLType.F32 or math.prod(values.shape[1:]) != width:
            raise BackendError(f"store_columns: float32 rows of {width} expected, got {values.dtype.name} {list(values.shape)}")
        idx = cells._t.long()
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise BackendError(f"store_columns: cells out of range [0, {n}): {idx.tolist()}")
        cache._t.index_copy_(1, idx, values._t.reshape(t, width).T)

    def view_columns(self, cache: Tensor, start: int, length: int, heads: int) -> Tensor:
        """Columns [start, start+length) of a [width, n_cells] cache as [heads, width / heads, length]."""
        self._check_open()
        if not isinstance(cache, TorchTensor) or cache.ctx is not None or cache.ndim != 2:
            raise BackendError("view_columns() takes a persistent 2-D tensor (a cache)")
        if not cache.owner.alive:
            raise BackendError(cache.owner.message)
        width, n = cache.shape
        start, length, heads = int(start), int(length), int(heads)
        if not (0 <= start and 0 < length and start + length <= n) or heads <= 0 or width % heads:
            raise BackendError(f"view_columns [{start}, {start + length}) x {heads} heads invalid for a [{width}, {n}] cache")
        return self._new(cache._t.narrow(1, start, length).reshape(heads, width // heads, length))

    def compute(self, *outputs: Tensor) -> list[np.ndarray]:
        """The outputs as float32 numpy arrays (copies); the ops have already run."""
        self._check_open()
        results = []
        for out in self.with_records(outputs):
            if not isinstance(out, TorchTensor):
                raise BackendError(f"expected a torch backend tensor, got {type(out).__name__}")
            out._step()
            if out.dtype != GGMLType.F32:
                raise BackendError(f"outputs must be float32, got {out.dtype.name}")
            results.append(out._t.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy())
        self.computed = True
        return self.hand_back(results, len(outputs))

    def close(self) -> None:
        """Free the step's tensors; using them afterwards raises BackendError."""
        self.kill()


class TorchBackend(Backend):
    """Eager PyTorch on `device` (cpu, cuda, mps), weights dequantized to float32."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", n_threads: int | None = None):
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise BackendError(f"invalid torch device {device!r}: {e}") from None
        if n_threads is not None:
            if not isinstance(n_threads, int) or n_threads < 1:
                raise BackendError(f"n_threads must be a positive integer, got {n_threads!r}")
            # Process-wide in torch: the last backend made decides.
            torch.set_num_threads(n_threads)
        self._weights = _Owner("backend")
        self.recorder = Recorder.from_env()

    def _persistent(self, t: torch.Tensor) -> TorchTensor:
        if not self._weights.alive:
            raise BackendError("backend used after it was closed")
        return TorchTensor(t, self._weights, None)

    def load(self, gguf, names: Sequence[str] | None = None, gathered: Collection[str] = ()) -> Mapping[str, Tensor]:
        """Weights of an open GGUFFile dequantized to float32, by GGUF name (`gathered` needs nothing here)."""
        names = list(gguf.tensors) if names is None else list(names)
        weights = {}
        for name in names:
            info = gguf.tensors.get(name)
            if info is None:
                raise BackendError(f"no tensor named {name!r} in the model file")
            if not 1 <= len(info.shape) <= MAX_DIMS:
                raise BackendError(f"tensor {name!r} has {len(info.shape)} dims; 1 to {MAX_DIMS} are supported")
            try:
                t = dequantize(gguf.tensor_data(name), info.type, info.shape, device=self.device)
            except ValueError as e:
                raise BackendError(f"cannot load tensor {name!r}: {e}") from None
            weights[name] = self._persistent(t)
        return weights

    def zeros(self, shape: Sequence[int], dtype: GGMLType) -> Tensor:
        """A persistent zero tensor; stored as float32 whatever `dtype` asks (this is the reference)."""
        try:
            GGMLType(dtype)
        except ValueError:
            raise BackendError(f"unknown ggml type {dtype!r}") from None
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise BackendError(f"zeros() needs a shape of integers, got {shape!r}") from None
        if not 1 <= len(shape) <= MAX_DIMS or any(s <= 0 for s in shape):
            raise BackendError(f"zeros() needs 1 to {MAX_DIMS} positive dims, got {list(shape)}")
        return self._persistent(torch.zeros(shape, dtype=torch.float32, device=self.device))

    def context(self, reusable: bool = False, rows_apart: bool = False) -> Context:
        """A fresh context for one step (`rows_apart` changes nothing in float32 eager ops)."""
        if not self._weights.alive:
            raise BackendError("backend used after it was closed")
        ctx = TorchContext(self)
        ctx.recorder = self.recorder
        return ctx

    def close(self) -> None:
        """Free weights and caches; tensors made by this backend can no longer be used."""
        self._weights.kill()
