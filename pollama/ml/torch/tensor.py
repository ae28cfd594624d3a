"""The reference backend's tensor: a torch tensor in PyTorch order, and its eager ops.

Every op checks what the ggml backend would refuse (tensors of two contexts in one op, an op
on weights alone, more than 4 dims) and raises here too.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import (
    BackendError, Rope, RopeMode, Tensor, check_concat, check_linear_experts, check_rope_sections, check_slice,
)
from pollama.ml.torch.rope import multi_rope_cos_sin, rope_cos_sin

if TYPE_CHECKING:
    from pollama.ml.torch.context import TorchContext


MAX_DIMS = 4  # ggml's GGML_MAX_DIMS: a shape the ggml backend could not hold is refused here too

_TORCH_TYPES = {torch.float32: GGMLType.F32, torch.int32: GGMLType.I32}


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
