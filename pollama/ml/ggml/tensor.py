"""The ggml backend's tensor: a ggml tensor seen in PyTorch order, and its ops.

Every op is checked in Python before ggml sees it, because a bad ggml call aborts the
process (GGML_ASSERT) or segfaults: shapes, types, and that operands are still alive.
Shapes are PyTorch order here and reversed to ggml's `ne` (innermost first) at the call.
An op is built in the step context (context.py) its operands belong to.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Sequence

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import (
    BackendError, Rope, RopeMode, Tensor, check_concat, check_linear_experts, check_rope_sections, check_slice,
)
from pollama.ml.ggml.lib import ggml

if TYPE_CHECKING:
    from pollama.ml.ggml.context import GGMLContext


# Types a weight may have to be multiplied by ggml's CPU kernels (all float and block formats).
MATMUL_TYPES = frozenset(t for t in GGMLType if t not in (GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64, GGMLType.F64))
CACHE_TYPES = (GGMLType.F32, GGMLType.F16)


class _Owner:
    """Something that owns tensors and may be closed (a step context or a weight store)."""

    alive = True
    label = "tensor"


class GGMLTensor(Tensor):
    """A ggml tensor seen in PyTorch order."""

    __slots__ = ("ptr", "shape", "dtype", "owner", "ctx", "repacked", "contiguous_", "bound")

    def __init__(self, ptr, shape: tuple[int, ...], dtype: GGMLType, owner: _Owner, ctx: GGMLContext | None, contiguous: bool = True):
        self.ptr = ptr
        self.shape = shape
        self.dtype = dtype
        self.owner = owner
        self.ctx = ctx  # the step context that created it; None for persistent tensors
        self.repacked = False  # a weight in CPU_REPACK layout: matmul only
        # Tracked here rather than asked of ggml: only permute makes a non-contiguous tensor.
        self.contiguous_ = contiguous
        # An index made in the graph (top_k) has its values in [0, bound): ggml aborts on an
        # index out of range, and this is what proves one in range before the values exist.
        self.bound: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"GGMLTensor({list(self.shape)}, {self.dtype.name})"

    # -- helpers ----------------------------------------------------------------------------
    def _step(self, *others: Tensor | None) -> GGMLContext:
        """The step context an op on self and others is built in, after checking them."""
        ctx = self.ctx
        if not others and ctx is not None and ctx.alive:
            return ctx
        for t in (self, *others):
            if t is None:
                continue
            if not isinstance(t, GGMLTensor):
                raise BackendError(f"expected a ggml tensor, got {type(t).__name__}")
            if not t.owner.alive:
                raise BackendError(f"{t.owner.label} used after it was freed")
            if t.ctx is not None:
                if ctx is None:
                    ctx = t.ctx
                elif t.ctx is not ctx:
                    raise BackendError("tensors from two different contexts used in one op")
        if ctx is None:
            raise BackendError("an op on persistent tensors only needs a step context: use ctx.view() or an input")
        return ctx

    def _float(self, op: str) -> None:
        if self.dtype != GGMLType.F32:
            raise BackendError(f"{op} needs a float32 tensor, got {self.dtype.name} {list(self.shape)}")

    def _is_contiguous(self) -> bool:
        return self.contiguous_

    # -- linear algebra ---------------------------------------------------------------------
    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        ctx = self._step(weight, bias)
        self._float("linear")
        if not 2 <= weight.ndim <= 4 or weight.dtype not in MATMUL_TYPES:
            raise BackendError(f"linear weight must be 2-D to 4-D in a matmul type, got {weight.dtype.name} {list(weight.shape)}")
        n_in = math.prod(weight.shape[1:])
        if n_in != self.shape[-1]:
            raise BackendError(f"linear: input {list(self.shape)} does not match weight {list(weight.shape)}")
        if self.ndim > 4:
            raise BackendError("linear: input has more than 4 dims")
        w = weight.ptr
        if weight.ndim > 2:  # a convolution kernel read as [out, channels * kh * kw]
            if weight.repacked or not weight.contiguous_:
                raise BackendError("linear: a kernel with more than 2 dims must be a plain contiguous tensor")
            w = ggml.ggml_reshape_2d(ctx.ctx, w, n_in, weight.shape[0])
            ctx.n_tensors += 1
        x = self if self._is_contiguous() else self.contiguous()
        rows = math.prod(self.shape[:-1])
        if ctx.rows_apart and rows > 1:
            # Rows as planes [rows, 1, in]: ggml then multiplies one row at a time with the
            # kernel a one-row input gets (llamafile's tinyBLAS wants 2+ rows, the repacked
            # gemm 4+), so each row's result is bit for bit its one-token step's.
            planes = ggml.ggml_reshape_3d(ctx.ctx, x.ptr, n_in, 1, rows)
            product = ggml.ggml_mul_mat(ctx.ctx, w, planes)  # [rows, 1, out]
            ne = (weight.shape[0], *self.shape[:-1][::-1])
            reshape = (ggml.ggml_reshape_1d, ggml.ggml_reshape_2d, ggml.ggml_reshape_3d, ggml.ggml_reshape_4d)[len(ne) - 1]
            ctx.n_tensors += 2
            out = ctx._new(reshape(ctx.ctx, product, *ne), (*self.shape[:-1], weight.shape[0]))
        else:
            out = ctx._new(ggml.ggml_mul_mat(ctx.ctx, w, x.ptr), (*self.shape[:-1], weight.shape[0]))
        if bias is not None:
            if bias.shape != (weight.shape[0],):
                raise BackendError(f"linear bias {list(bias.shape)} does not match weight {list(weight.shape)}")
            out = out + bias
        return out

    def rows(self, index: Tensor) -> Tensor:
        ctx = self._step(index)
        if index.dtype != GGMLType.I32 or index.ndim != self.ndim - 1:
            raise BackendError(f"rows() of a {list(self.shape)} table needs a {self.ndim - 1}-D int32 index, "
                               f"got {index.dtype.name} {list(index.shape)}")
        if self.ndim == 3:  # per batch: [b, n, d] by [b, k]
            self._float("rows() per batch")
            if index.shape[0] != self.shape[0]:
                raise BackendError(f"rows(): index {list(index.shape)} does not have the {self.shape[0]} batches of {list(self.shape)}")
        elif self.ndim != 2:
            raise BackendError(f"rows() needs a 2-D table (or 3-D, per batch), got {list(self.shape)}")
        if self.repacked:
            raise BackendError("rows() on a weight repacked for matmul: load it as `gathered`")
        ctx._check_index(index, self.shape[-2], "rows()")
        table = self if self._is_contiguous() else self.contiguous()
        idx = index if index._is_contiguous() else index.contiguous()
        ptr = ggml.ggml_get_rows(ctx.ctx, table.ptr, idx.ptr)
        return ctx._new(ptr, (*index.shape, self.shape[-1]))

    def linear_experts(self, weight: Tensor, experts: Tensor, bias: Tensor | None = None) -> Tensor:
        ctx = self._step(weight, experts, bias)
        check_linear_experts(self, weight, experts, bias)
        if weight.dtype not in MATMUL_TYPES or weight.repacked or not weight.contiguous_:
            raise BackendError(f"linear_experts weights must be a plain tensor in a matmul type, got {weight.dtype.name}")
        n_experts = weight.shape[0]
        ctx._check_index(experts, n_experts, "linear_experts()")
        x = self if self._is_contiguous() else self.contiguous()
        ids = experts if experts._is_contiguous() else experts.contiguous()
        # ggml order: as [in, out, n_experts], b [in, k or 1, t], ids [k, t] -> [out, k, t].
        out = ctx._new(ggml.ggml_mul_mat_id(ctx.ctx, weight.ptr, x.ptr, ids.ptr), (*experts.shape, weight.shape[1]))
        if bias is not None:
            b = bias.ptr
            if bias.dtype != GGMLType.F32:  # ggml_add_id adds float32 rows only
                b = ggml.ggml_cast(ctx.ctx, b, int(GGMLType.F32))
                ctx.n_tensors += 1
            out = ctx._new(ggml.ggml_add_id(ctx.ctx, out.ptr, b, ids.ptr), out.shape)
        return out

    def top_k(self, k: int) -> Tensor:
        ctx = self._step()
        self._float("top_k")
        n = self.shape[-1]
        if not isinstance(k, int) or not 0 < k <= n:
            raise BackendError(f"top_k({k!r}) of {n} values")
        src = self if self._is_contiguous() else self.contiguous()
        view = ggml.ggml_argsort_top_k(ctx.ctx, src.ptr, k)  # argsort, then a strided view
        ctx.n_tensors += 2
        out = ctx._new(ggml.ggml_cont(ctx.ctx, view), (*self.shape[:-1], k), GGMLType.I32)
        out.bound = n
        return out

    # -- elementwise ------------------------------------------------------------------------
    def _binary(self, other: Tensor, fn, op: str) -> Tensor:
        ctx = self._step(other)
        if self.dtype != GGMLType.F32 or other.dtype != GGMLType.F32:
            raise BackendError(f"{op} needs float32 tensors, got {self.dtype.name} and {other.dtype.name}")
        if other.ndim > self.ndim or any(
            o != 1 and o != s for o, s in zip(reversed(other.shape), reversed(self.shape))
        ):
            raise BackendError(f"{op}: shape {list(other.shape)} does not broadcast to {list(self.shape)}")
        a = self if self._is_contiguous() else self.contiguous()
        b = other if other._is_contiguous() else other.contiguous()
        return ctx._new(fn(ctx.ctx, a.ptr, b.ptr), self.shape)

    def __add__(self, other: Tensor) -> Tensor:
        return self._binary(other, ggml.ggml_add, "add")

    def __mul__(self, other: Tensor) -> Tensor:
        return self._binary(other, ggml.ggml_mul, "mul")

    def __sub__(self, other: Tensor) -> Tensor:
        return self._binary(other, ggml.ggml_sub, "sub")

    def __truediv__(self, other: Tensor) -> Tensor:
        return self._binary(other, ggml.ggml_div, "div")

    def _unary(self, fn, op: str, *args) -> Tensor:
        ctx = self._step()
        self._float(op)
        src = self if self._is_contiguous() else self.contiguous()
        return ctx._new(fn(ctx.ctx, src.ptr, *args), self.shape)

    def scale(self, factor: float) -> Tensor:
        return self._unary(ggml.ggml_scale, "scale", float(factor))

    def silu(self) -> Tensor:
        return self._unary(ggml.ggml_silu, "silu")

    def gelu(self) -> Tensor:
        if self._step().backend.exact_gelu:
            return self._exact_gelu()
        return self._unary(ggml.ggml_gelu, "gelu")

    def _exact_gelu(self) -> Tensor:
        # ggml's GELU looks the input up in a table of F16 values (as llama.cpp computes it),
        # about 1e-3 off; this is the tanh formula in float32, as transformers computes it.
        inner = (self + self * self * self.scale(0.044715)).scale(math.sqrt(2.0 / math.pi)).tanh()
        ctx = inner._step()
        one_plus = ctx._new(ggml.ggml_scale_bias(ctx.ctx, inner.ptr, 1.0, 1.0), inner.shape)
        return (self * one_plus).scale(0.5)

    def gelu_erf(self) -> Tensor:
        return self._unary(ggml.ggml_gelu_erf, "gelu_erf")

    def tanh(self) -> Tensor:
        return self._unary(ggml.ggml_tanh, "tanh")

    def sigmoid(self) -> Tensor:
        return self._unary(ggml.ggml_sigmoid, "sigmoid")

    def _glu(self, up: Tensor, fn, op: str) -> Tensor:
        ctx = self._step(up)
        if self.dtype != GGMLType.F32 or up.dtype != GGMLType.F32 or self.shape != up.shape:
            raise BackendError(f"{op} needs two float32 tensors of one shape, got {list(self.shape)} and {list(up.shape)}")
        a = self if self._is_contiguous() else self.contiguous()
        b = up if up._is_contiguous() else up.contiguous()
        return ctx._new(fn(ctx.ctx, a.ptr, b.ptr), self.shape)

    def swiglu(self, up: Tensor) -> Tensor:
        return self._glu(up, ggml.ggml_swiglu_split, "swiglu")

    def swiglu_oai(self, up: Tensor, alpha: float, limit: float) -> Tensor:
        return self._glu(up, lambda c, a, b: ggml.ggml_swiglu_oai(c, a, b, float(alpha), float(limit)), "swiglu_oai")

    def geglu(self, up: Tensor) -> Tensor:
        if self._step(up).backend.exact_gelu:
            return self._exact_gelu() * up
        return self._glu(up, ggml.ggml_geglu_split, "geglu")

    def softmax(self) -> Tensor:
        return self._unary(ggml.ggml_soft_max, "softmax")

    def sum_rows(self) -> Tensor:
        ctx = self._step()
        self._float("sum_rows")
        src = self if self._is_contiguous() else self.contiguous()
        return ctx._new(ggml.ggml_sum_rows(ctx.ctx, src.ptr), (*self.shape[:-1], 1))

    def rms_norm(self, eps: float) -> Tensor:
        return self._unary(ggml.ggml_rms_norm, "rms_norm", float(eps))

    def layer_norm(self, eps: float) -> Tensor:
        return self._unary(ggml.ggml_norm, "layer_norm", float(eps))

    # -- shape ------------------------------------------------------------------------------
    def reshape(self, *shape: int) -> Tensor:
        ctx = self._step()
        total = math.prod(self.shape)
        if -1 in shape or any(s <= 0 for s in shape):
            shape = _resolve_shape(shape, total)
        if math.prod(shape) != total or not 1 <= len(shape) <= 4:
            raise BackendError(f"cannot reshape {list(self.shape)} to {list(shape)}")
        src = self if self._is_contiguous() else self.contiguous()
        ne = shape[::-1]
        fn = (ggml.ggml_reshape_1d, ggml.ggml_reshape_2d, ggml.ggml_reshape_3d, ggml.ggml_reshape_4d)[len(ne) - 1]
        return ctx._new(fn(ctx.ctx, src.ptr, *ne), shape, src.dtype)

    def permute(self, *dims: int) -> Tensor:
        ctx = self._step()
        n = self.ndim
        if sorted(dims) != list(range(n)):
            raise BackendError(f"permute{dims} is not a permutation of {n} dims")
        # PyTorch dim j is ggml axis n-1-j; ggml_permute takes, per source axis, its destination.
        axes = list(range(4))
        for i, d in enumerate(dims):
            axes[n - 1 - d] = n - 1 - i
        ptr = ggml.ggml_permute(ctx.ctx, self.ptr, *axes)
        identity = list(dims) == list(range(n))
        return ctx._new(ptr, tuple(self.shape[d] for d in dims), self.dtype, contiguous=identity and self.contiguous_)

    def contiguous(self) -> Tensor:
        ctx = self._step()
        if self._is_contiguous():
            return self
        return ctx._new(ggml.ggml_cont(ctx.ctx, self.ptr), self.shape, self.dtype)

    def concat(self, other: Tensor, dim: int) -> Tensor:
        ctx = self._step(other)
        dim = check_concat(self, other, dim)
        a = self if self._is_contiguous() else self.contiguous()
        b = other if other._is_contiguous() else other.contiguous()
        shape = tuple(x + y if i == dim else x for i, (x, y) in enumerate(zip(self.shape, other.shape)))
        return ctx._new(ggml.ggml_concat(ctx.ctx, a.ptr, b.ptr, self.ndim - 1 - dim), shape)

    def slice(self, dim: int, start: int, stop: int) -> Tensor:
        ctx = self._step()
        dim = check_slice(self, dim, start, stop)
        src = self if self._is_contiguous() else self.contiguous()
        axis = self.ndim - 1 - dim  # in ggml order
        ne = list(src.ptr.contents.ne[:4])
        nb = list(src.ptr.contents.nb[:4])
        ne[axis] = stop - start
        view = ggml.ggml_view_4d(ctx.ctx, src.ptr, ne[0], ne[1], ne[2], ne[3], nb[1], nb[2], nb[3], start * nb[axis])
        ctx.n_tensors += 1
        shape = tuple(stop - start if i == dim else n for i, n in enumerate(self.shape))
        return ctx._new(ggml.ggml_cont(ctx.ctx, view), shape, self.dtype)

    # -- position ---------------------------------------------------------------------------
    def rope(self, positions: Tensor, rope: Rope, freq_factors: Tensor | None = None) -> Tensor:
        ctx = self._step(positions, freq_factors)
        self._float("rope")
        if self.ndim != 3:
            raise BackendError(f"rope needs x [seq, heads, head_dim], got {list(self.shape)}")
        n_pos = 4 * self.shape[0] if rope.mode.multi else self.shape[0]
        if positions.dtype != GGMLType.I32 or positions.shape != (n_pos,):
            raise BackendError(f"rope positions must be int32 [{n_pos}], got {positions.dtype.name} {list(positions.shape)}")
        if not (0 < rope.dims <= self.shape[2]) or rope.dims % 2:
            raise BackendError(f"rope dims {rope.dims} invalid for head_dim {self.shape[2]}")
        n_factors = self.shape[2] // 2 if rope.mode == RopeMode.VISION else rope.dims // 2
        if freq_factors is not None and (freq_factors.shape != (n_factors,) or freq_factors.dtype != GGMLType.F32):
            raise BackendError(f"rope frequency factors must be float32 [{n_factors}], got {list(freq_factors.shape)}")
        src = self if self._is_contiguous() else self.contiguous()
        if rope.mode.multi:
            check_rope_sections(rope, self.shape[2])
            ptr = ggml.ggml_rope_multi(
                ctx.ctx, src.ptr, positions.ptr, freq_factors.ptr if freq_factors is not None else None,
                rope.dims, (ctypes.c_int * 4)(*rope.sections), int(rope.mode), rope.original_context, rope.base,
                rope.freq_scale, rope.ext_factor, rope.attn_factor, rope.beta_fast, rope.beta_slow,
            )
            return ctx._new(ptr, self.shape)
        ptr = ggml.ggml_rope_ext(
            ctx.ctx, src.ptr, positions.ptr, freq_factors.ptr if freq_factors is not None else None,
            rope.dims, int(rope.mode), rope.original_context, rope.base, rope.freq_scale,
            rope.ext_factor, rope.attn_factor, rope.beta_fast, rope.beta_slow,
        )
        return ctx._new(ptr, self.shape)


def _resolve_shape(shape: Sequence[int], total: int) -> tuple[int, ...]:
    """Fill in one -1 dim like torch.reshape."""
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) == 1:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or total % known:
            raise BackendError(f"cannot infer -1 in {list(shape)} for {total} elements")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if any(s <= 0 for s in shape):
        raise BackendError(f"invalid shape {list(shape)}")
    return shape


def _rows_dense(tensor: GGMLTensor) -> bool:
    """Whether the innermost (ggml ne0) dim is contiguous, as ggml's matmul needs."""
    return tensor.contiguous_ or tensor.ptr.contents.nb[0] == ggml.ggml_type_size(int(tensor.dtype))
