"""The production backend: GGML's CPU kernels through pollama's ctypes binding (lib.py).

Every op is checked in Python before ggml sees it, because a bad ggml call aborts the
process (GGML_ASSERT) or segfaults: shapes, types, and that operands are still alive.
Shapes are PyTorch order here and reversed to ggml's `ne` (innermost first) at the call.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
from typing import Collection, Mapping, Sequence

import numpy as np

from pollama.fs import mxfp4
from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import (
    Backend, BackendError, Context, Recorder, Rope, RopeMode, Tensor, check_concat, check_linear_experts,
    check_rope_sections, check_slice,
)
from pollama.ml.ggml.lib import ggml

# Types a weight may have to be multiplied by ggml's CPU kernels (all float and block formats).
MATMUL_TYPES = frozenset(t for t in GGMLType if t not in (GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64, GGMLType.F64))
CACHE_TYPES = (GGMLType.F32, GGMLType.F16)

# Upper bound on tensors (ops and views) in one step's context; checked before creating one
# because running out inside ggml aborts.
MAX_TENSORS = 32768

_NP_TYPES = {np.dtype(np.float32): GGMLType.F32, np.dtype(np.int32): GGMLType.I32}


def default_threads() -> int:
    """Threads for compute: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


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


def _check_range(array: np.ndarray, limit: int, what: str) -> None:
    # ggml asserts (aborts) on an out-of-range row index.
    if array.size and (array.min() < 0 or array.max() >= limit):
        raise BackendError(f"{what}: index out of range [0, {limit}): min {array.min()}, max {array.max()}")


def _column_index(cells: np.ndarray, width: int, n_cells: int, dtype: GGMLType) -> np.ndarray:
    """Flat element index of value (token i, column c) in a [width, n_cells] cache, c-major."""
    flat = np.arange(width, dtype=np.int64)[:, None] * n_cells + cells[None, :]
    return flat.ravel().astype(np.int64 if dtype == GGMLType.I64 else np.int32)


class GGMLContext(Context, _Owner):
    """One step: a ggml context (tensor metadata only), its graph, and its inputs."""

    label = "tensor of a closed context"

    def __init__(self, backend: GGMLBackend, reusable: bool = False, rows_apart: bool = False):
        self.backend = backend
        self.rows_apart = rows_apart
        # A graph that is computed again later needs a compute buffer of its own: ggml's
        # allocator keeps a tensor's address once set, so if another graph grew the shared
        # buffer in between, the old graph would write into freed memory.
        self.reusable = reusable
        self.allocr = ggml.ggml_gallocr_new(backend.cpu_buft) if reusable else backend.allocr
        params = ggml.ggml_init_params(mem_size=backend.ctx_mem_size, mem_buffer=None, no_alloc=True)
        self.ctx = ggml.ggml_init(params)
        if not self.ctx:
            raise BackendError("ggml_init failed (out of memory)")
        self.graph = ggml.ggml_new_graph_custom(self.ctx, MAX_TENSORS, False)
        self.n_tensors = 0
        self.inputs: list[tuple[GGMLTensor, np.ndarray]] = []
        self.arrays: dict[int, np.ndarray] = {}  # id(input tensor) -> its data, for index checks
        self.masks: set[GGMLTensor] = set()
        self.masks_f16: dict[int, object] = {}  # the F16 cast of each mask, by id(mask), for flash attention
        self.column_index: dict[tuple[int, int, int], GGMLTensor] = {}
        # For rerun(): inputs by name, the (tightest) bound each index input was checked
        # against, the column indices derived from a cell index, the first compute's outputs.
        self.named: dict[str, GGMLTensor] = {}
        self.index_limits: dict[int, int] = {}
        self.derived: list[tuple[GGMLTensor, GGMLTensor, int, int]] = []
        self.outputs: list[GGMLTensor] = []
        self.alive = True
        self.computed = False

    def _new(self, ptr, shape: tuple[int, ...], dtype: GGMLType = GGMLType.F32, contiguous: bool = True) -> GGMLTensor:
        # Each op makes at most a handful of tensors; the margin keeps ggml's own allocation
        # inside the context from ever running out (which would abort).
        self.n_tensors += 1
        if self.n_tensors > MAX_TENSORS - 8:
            raise BackendError(f"a step may create at most {MAX_TENSORS} tensors")
        if not ptr:
            raise BackendError("ggml returned no tensor")
        return GGMLTensor(ptr, tuple(shape), dtype, self, self, contiguous)

    def _check_index(self, index: GGMLTensor, limit: int, op: str) -> None:
        # ggml asserts (aborts) on an out-of-range row index, so check the input's values here.
        if index.bound is not None:  # made by top_k: in range by construction
            if index.bound > limit:
                raise BackendError(f"{op}: an index into {index.bound} values used on {limit} rows")
            return
        array = self.arrays.get(id(index))
        if array is None:
            raise BackendError(f"{op} takes its index from ctx.input() or top_k()")
        known = self.index_limits.get(id(index))
        if known is not None and known <= limit:
            return  # already checked against this bound or a tighter one (cells: once per layer)
        _check_range(array, limit, op)
        self.index_limits[id(index)] = limit if known is None else min(known, limit)

    def _check_open(self) -> None:
        if not self.alive:
            raise BackendError("context used after it was closed")
        if self.computed:
            raise BackendError("context already computed: make a new one for the next step")

    def input(self, array: np.ndarray, name: str | None = None) -> Tensor:
        self._check_open()
        array = np.ascontiguousarray(array)
        dtype = _NP_TYPES.get(array.dtype)
        if dtype is None:
            raise BackendError(f"inputs must be float32 or int32 arrays, got {array.dtype}")
        if not 1 <= array.ndim <= 4 or array.size == 0:
            raise BackendError(f"inputs must have 1 to 4 non-empty dims, got shape {array.shape}")
        return self._input(array, dtype, name)

    def _input(self, array: np.ndarray, dtype: GGMLType, name: str | None = None) -> GGMLTensor:
        if name is not None and name in self.named:
            raise BackendError(f"two inputs named {name!r}")
        ne = array.shape[::-1]
        fn = (ggml.ggml_new_tensor_1d, ggml.ggml_new_tensor_2d, ggml.ggml_new_tensor_3d, ggml.ggml_new_tensor_4d)[len(ne) - 1]
        tensor = self._new(fn(self.ctx, int(dtype), *ne), array.shape, dtype)
        ggml.ggml_set_input(tensor.ptr)
        self.inputs.append((tensor, array))
        self.arrays[id(tensor)] = array
        if name is not None:
            self.named[name] = tensor
        return tensor

    def attention_mask(self, mask: np.ndarray, name: str | None = None) -> Tensor:
        self._check_open()
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.size == 0:
            raise BackendError(f"attention mask must be a 2-D array [queries, keys], got {getattr(mask, 'shape', mask)!r}")
        tensor = self._input(np.ascontiguousarray(mask, dtype=np.float32), GGMLType.F32, name)
        self.masks.add(tensor)
        return tensor

    def attention(
        self, q: Tensor, k: Tensor, v_t: Tensor, mask: Tensor | None, scale: float, softcap: float = 0.0, groups=None,
        flash: bool | None = None, sinks: Tensor | None = None,
    ) -> Tensor:
        self._check_open()
        q._step(k, v_t, mask, sinks)
        if q.ndim != 3 or k.ndim != 3 or v_t.ndim != 3:
            raise BackendError(f"attention needs q [t,h,d], k [n,hkv,d], v_t [hkv,dv,n]; got {list(q.shape)}, {list(k.shape)}, {list(v_t.shape)}")
        flash = self.backend.flash_attention if flash is None else flash
        (t, h, d), (n, hkv, dk) = q.shape, k.shape
        nv, hkv_v, dv = v_t.shape if flash else (v_t.shape[2], v_t.shape[0], v_t.shape[1])
        if dk != d or nv != n or hkv_v != hkv or h % hkv:
            raise BackendError(f"attention shapes do not fit: q {list(q.shape)}, k {list(k.shape)}, v {list(v_t.shape)}")
        if mask is not None and (mask.shape != (t, n) or mask not in self.masks):
            raise BackendError(f"attention mask must come from attention_mask() with shape [{t}, {n}], got {list(mask.shape)}")
        if q.dtype != GGMLType.F32 or k.dtype not in CACHE_TYPES or v_t.dtype not in CACHE_TYPES:
            raise BackendError(f"attention types: q {q.dtype.name}, k {k.dtype.name}, v {v_t.dtype.name}")
        if sinks is not None and (sinks.dtype != GGMLType.F32 or sinks.shape != (h,) or not sinks.contiguous_):
            raise BackendError(f"attention sinks must be float32 [{h}], got {sinks.dtype.name} {list(sinks.shape)}")
        sinks_ptr = sinks.ptr if sinks is not None else None
        # ggml multiplies only operands whose innermost dim is dense: copy any other (e.g. V
        # permuted by the caller rather than viewed from a cache with view_columns()).
        q, k, v_t = (x if _rows_dense(x) else x.contiguous() for x in (q, k, v_t))
        kernel = self._flash_attention if flash else self._attention
        mask_ptr = None
        if mask is not None:
            mask_ptr = self._mask_f16(mask) if flash else mask.ptr
        if not groups or len(groups) == 1:
            return self._new(kernel(q.ptr, k.ptr, v_t.ptr, mask_ptr, scale, softcap, sinks_ptr), (t, h, dv)).reshape(t, h * dv)
        # One sequence at a time: ggml's kernels for one query row and for several sum in a
        # different order, and that difference, rounded to 8 bits in the next matmul, can move
        # logits by a whole unit. Computed alone, each sequence gets exactly its solo result.
        if [start for start, _ in groups] != list(itertools.accumulate([0] + [n for _, n in groups[:-1]])) or sum(
            n for _, n in groups
        ) != t or any(n <= 0 for _, n in groups):
            raise BackendError(f"attention groups {list(groups)} do not cover the {t} query rows in order")
        c, out = self.ctx, None
        for start, rows in groups:
            q_rows = ggml.ggml_view_3d(c, q.ptr, d, h, rows, q.ptr.contents.nb[1], q.ptr.contents.nb[2], start * q.ptr.contents.nb[2])
            mask_rows = None
            if mask_ptr is not None:
                m = mask_ptr.contents
                mask_rows = ggml.ggml_view_2d(c, mask_ptr, m.ne[0], rows, m.nb[1], start * m.nb[1])
            part = kernel(q_rows, k.ptr, v_t.ptr, mask_rows, scale, softcap, sinks_ptr)
            out = part if out is None else ggml.ggml_concat(c, out, part, 2)
            self.n_tensors += 3
        return self._new(out, (t, h, dv)).reshape(t, h * dv)

    def _attention(self, q, k, v_t, mask, scale: float, softcap: float, sinks=None):
        c = self.ctx
        # llama.cpp's attention without flash attention, op for op, so logits match its own:
        # kq [n, t, h] = k·q per head (kv heads broadcast over their query groups), softmax
        # with mask and scale, then v_t·kq -> [dv, t, h] (ggml order).
        qp = ggml.ggml_permute(c, q, 0, 2, 1, 3)
        kp = ggml.ggml_permute(c, k, 0, 2, 1, 3)
        kq = ggml.ggml_mul_mat(c, kp, qp)
        ggml.ggml_prec_set_acc(kq, ggml.GGML_PREC_F32)
        if softcap:
            kq = ggml.ggml_tanh(c, ggml.ggml_scale(c, kq, float(scale) / softcap))
            kq = ggml.ggml_scale(c, kq, float(softcap))
            scale = 1.0
        kq = ggml.ggml_soft_max_ext(c, kq, mask, float(scale), 0.0)
        if sinks is not None:
            ggml.ggml_soft_max_add_sinks(kq, sinks)
        kqv = ggml.ggml_mul_mat(c, v_t, kq)
        self.n_tensors += 10
        return ggml.ggml_cont(c, ggml.ggml_permute(c, kqv, 0, 2, 1, 3))  # [dv, h, t]

    def _mask_f16(self, mask: Tensor):
        # The fused kernel takes its mask in F16: cast once per step, not once per layer (every
        # layer reads the same mask; an op fewer each is a thread barrier fewer each).
        cast = self.masks_f16.get(id(mask))
        if cast is None:
            cast = self.masks_f16[id(mask)] = ggml.ggml_cast(self.ctx, mask.ptr, int(GGMLType.F16))
            self.n_tensors += 1
        return cast

    def _flash_attention(self, q, k, v, mask16, scale: float, softcap: float, sinks=None):
        c = self.ctx
        # ggml's fused kernel wants q [d, t, h], k/v [d, n, kv_heads] (ne order) and an F16 mask.
        qp = ggml.ggml_permute(c, q, 0, 2, 1, 3)
        kp = ggml.ggml_permute(c, k, 0, 2, 1, 3)
        vp = ggml.ggml_permute(c, v, 0, 2, 1, 3)
        out = ggml.ggml_flash_attn_ext(c, qp, kp, vp, mask16, float(scale), 0.0, float(softcap))
        ggml.ggml_prec_set_acc(out, ggml.GGML_PREC_F32)
        if sinks is not None:
            ggml.ggml_flash_attn_ext_add_sinks(out, sinks)
        self.n_tensors += 4
        return out  # [dv, h, t] in ne order

    def view(self, tensor: Tensor, start: int, length: int) -> Tensor:
        self._check_open()
        if not isinstance(tensor, GGMLTensor) or tensor.ctx is not None:
            raise BackendError("view() takes a persistent tensor (a cache)")
        if not tensor.owner.alive:
            raise BackendError(f"{tensor.owner.label} used after it was freed")
        if not (0 <= start and 0 < length and start + length <= tensor.shape[0]):
            raise BackendError(f"view rows [{start}, {start + length}) outside [0, {tensor.shape[0]})")
        ne = list(tensor.shape[::-1])
        ne[-1] = length
        nb = tensor.ptr.contents.nb
        offset = start * nb[len(ne) - 1]
        if len(ne) == 1:
            ptr = ggml.ggml_view_1d(self.ctx, tensor.ptr, ne[0], offset)
        elif len(ne) == 2:
            ptr = ggml.ggml_view_2d(self.ctx, tensor.ptr, ne[0], ne[1], nb[1], offset)
        elif len(ne) == 3:
            ptr = ggml.ggml_view_3d(self.ctx, tensor.ptr, ne[0], ne[1], ne[2], nb[1], nb[2], offset)
        else:
            ptr = ggml.ggml_view_4d(self.ctx, tensor.ptr, *ne, nb[1], nb[2], nb[3], offset)
        return self._new(ptr, (length, *tensor.shape[1:]), tensor.dtype)

    def store(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        self._check_open()
        values._step(cells)
        if not isinstance(cache, GGMLTensor) or cache.ctx is not None or not cache.owner.alive:
            raise BackendError("store() writes into a live persistent tensor (a cache)")
        if cells.dtype != GGMLType.I32 or cells.ndim != 1 or cells.shape[0] != values.shape[0]:
            raise BackendError(f"store: cells must be int32 [{values.shape[0]}], got {cells.dtype.name} {list(cells.shape)}")
        if values.dtype != GGMLType.F32 or cache.ndim != 2:
            raise BackendError("store: values must be float32 and the cache 2-D [cells, width]")
        self._check_index(cells, cache.shape[0], "store()")
        width = cache.shape[1]
        if math.prod(values.shape[1:]) != width:
            raise BackendError(f"store: rows of {list(values.shape[1:])} do not fit cache rows of {width}")
        rows = values.reshape(values.shape[0], width)
        ptr = ggml.ggml_set_rows(self.ctx, cache.ptr, rows.ptr, cells.ptr)
        self._new(ptr, cache.shape, cache.dtype)
        # Expanding now puts the write before every later read of the cache in the graph.
        ggml.ggml_build_forward_expand(self.graph, ptr)

    def store_columns(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        self._check_open()
        values._step(cells)
        if not isinstance(cache, GGMLTensor) or cache.ctx is not None or not cache.owner.alive:
            raise BackendError("store_columns() writes into a live persistent tensor (a cache)")
        if cache.ndim != 2 or values.dtype != GGMLType.F32:
            raise BackendError("store_columns: the cache must be 2-D [width, cells] and the values float32")
        width, n_cells = cache.shape
        t = values.shape[0]
        if cells.dtype != GGMLType.I32 or cells.shape != (t,):
            raise BackendError(f"store_columns: cells must be int32 [{t}], got {cells.dtype.name} {list(cells.shape)}")
        if math.prod(values.shape[1:]) != width:
            raise BackendError(f"store_columns: rows of {list(values.shape[1:])} do not fit cache columns of {width}")
        self._check_index(cells, n_cells, "store_columns()")
        # ggml writes rows, so both sides are seen as rows of one element: value (i, c) goes to
        # element c * n_cells + cells[i] of the cache. The index is shared by every layer.
        key = (id(cells), width, n_cells)
        index = self.column_index.get(key)
        if index is None:
            # 64-bit when the flat index could pass 2^31 (so that rerun() never needs to widen it).
            dtype = GGMLType.I64 if width * n_cells >= 2**31 else GGMLType.I32
            index = self._input(_column_index(self.arrays[id(cells)], width, n_cells, dtype), dtype)
            self.column_index[key] = index
            self.derived.append((index, cells, width, n_cells))
        c = self.ctx
        rows = values.reshape(t, width)
        src = ggml.ggml_reshape_2d(c, ggml.ggml_cont(c, ggml.ggml_transpose(c, rows.ptr)), 1, t * width)
        dst = ggml.ggml_reshape_2d(c, cache.ptr, 1, width * n_cells)
        ptr = ggml.ggml_set_rows(c, dst, src, index.ptr)
        self._new(ptr, cache.shape, cache.dtype)
        self.n_tensors += 4
        ggml.ggml_build_forward_expand(self.graph, ptr)

    def view_columns(self, cache: Tensor, start: int, length: int, heads: int) -> Tensor:
        self._check_open()
        if not isinstance(cache, GGMLTensor) or cache.ctx is not None or cache.ndim != 2:
            raise BackendError("view_columns() takes a persistent 2-D tensor (a cache)")
        if not cache.owner.alive:
            raise BackendError(f"{cache.owner.label} used after it was freed")
        width, n_cells = cache.shape
        if not (0 <= start and 0 < length and start + length <= n_cells) or heads <= 0 or width % heads:
            raise BackendError(f"view_columns [{start}, {start + length}) x {heads} heads invalid for a [{width}, {n_cells}] cache")
        es = ggml.ggml_element_size(cache.ptr)
        dv = width // heads
        ptr = ggml.ggml_view_3d(self.ctx, cache.ptr, length, dv, heads, n_cells * es, n_cells * es * dv, start * es)
        return self._new(ptr, (heads, dv, length), cache.dtype, contiguous=length == n_cells)

    def compute(self, *outputs: Tensor) -> list[np.ndarray]:
        self._check_open()
        self.asked = len(outputs)
        finals = []
        for out in self.with_records(outputs):
            out._step()
            if out.dtype != GGMLType.F32:
                raise BackendError(f"outputs must be float32, got {out.dtype.name}")
            if out.ptr.contents.view_src or not out.contiguous_:
                # A view's memory belongs to its source, which the allocator may reuse once the
                # source's last reader has run: give every output memory of its own.
                out = self._new(ggml.ggml_cont(self.ctx, out.ptr), out.shape, out.dtype)
            ggml.ggml_set_output(out.ptr)
            ggml.ggml_build_forward_expand(self.graph, out.ptr)
            finals.append(out)
        self.computed = True
        self.outputs = finals
        return self.hand_back(self._run(), self.asked)

    def _run(self) -> list[np.ndarray]:
        backend = self.backend
        if not ggml.ggml_gallocr_alloc_graph(self.allocr, self.graph):
            raise BackendError("could not allocate the compute graph (out of memory)")
        # An input no op reads (an M-RoPE model's 1-D positions) gets no memory: nothing to set.
        self.inputs = [(tensor, array) for tensor, array in self.inputs if tensor.ptr.contents.buffer]
        for tensor, array in self.inputs:
            ggml.ggml_backend_tensor_set(tensor.ptr, array.ctypes.data, 0, array.nbytes)
        status = ggml.ggml_backend_graph_compute(backend.cpu, self.graph)
        if status != 0:
            raise BackendError(f"ggml graph compute failed with status {status}")
        results = []
        for out in self.outputs:
            array = np.empty(out.shape, dtype=np.float32)
            ggml.ggml_backend_tensor_get(out.ptr, array.ctypes.data, 0, array.nbytes)
            results.append(array)
        return results

    def rerun(self, arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Compute the same graph again with new data for named inputs; the same outputs.

        Building a graph from Python costs milliseconds; a decode step's graph only changes
        when the number of attended cells does, so the engine reuses it in between.
        """
        if not self.alive or not self.computed or not self.reusable:
            raise BackendError("rerun() needs a reusable context that was computed and not closed")
        updates = []
        for name, array in arrays.items():
            tensor = self.named.get(name)
            if tensor is None:
                raise BackendError(f"no input named {name!r} in this graph")
            array = np.ascontiguousarray(array, dtype=np.float32 if tensor.dtype == GGMLType.F32 else np.int32)
            if array.shape != tensor.shape:
                raise BackendError(f"input {name!r} has shape {list(tensor.shape)} in this graph, got {list(array.shape)}")
            limit = self.index_limits.get(id(tensor))
            if limit is not None:
                _check_range(array, limit, f"input {name!r}")
            updates.append((tensor, array))
        for tensor, array in updates:
            self.arrays[id(tensor)] = array
        for index, cells, width, n_cells in self.derived:
            self.arrays[id(index)] = _column_index(self.arrays[id(cells)], width, n_cells, index.dtype)
        self.inputs = [(tensor, self.arrays[id(tensor)]) for tensor, _ in self.inputs]
        return self.hand_back(self._run(), self.asked)

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.inputs.clear()
            self.arrays.clear()
            ggml.ggml_free(self.ctx)
            self.ctx = None
            if self.reusable:
                ggml.ggml_gallocr_free(self.allocr)
            self.allocr = None


class _WeightStore(_Owner):
    """Weights of one file: a metadata context, the mmap-backed buffer, repacked copies."""

    label = "weight of a closed model"

    def __init__(self, gguf):
        self.gguf = gguf  # keeps the mapping alive while tensors point into it
        self.contexts: list = []
        self.buffers: list = []
        self.alive = True

    def free(self) -> None:
        if self.alive:
            self.alive = False
            for buffer in self.buffers:
                ggml.ggml_backend_buffer_free(buffer)
            for ctx in self.contexts:
                ggml.ggml_free(ctx)
            self.buffers.clear()
            self.contexts.clear()


class GGMLBackend(Backend):
    """GGML on the CPU, with weights zero-copy from the GGUF mapping or repacked for speed."""

    name = "ggml"

    def __init__(self, n_threads: int | None = None, repack: bool = True, flash_attention: bool = False,
                 exact_gelu: bool = False):
        self.n_threads = n_threads or default_threads()
        self.flash_attention = flash_attention
        # GELU from its tanh formula in float32 instead of ggml's F16 table: transformers'
        # numbers rather than llama.cpp's (see GGMLTensor.gelu).
        self.exact_gelu = exact_gelu
        self.cpu = ggml.ggml_backend_cpu_init()
        if not self.cpu:
            raise BackendError("could not initialise ggml's CPU backend")
        ggml.ggml_backend_cpu_set_n_threads(self.cpu, self.n_threads)
        self.cpu_buft = ggml.ggml_backend_cpu_buffer_type()
        self.allocr = ggml.ggml_gallocr_new(self.cpu_buft)
        self.ctx_mem_size = ggml.ggml_tensor_overhead() * MAX_TENSORS + ggml.ggml_graph_overhead_custom(MAX_TENSORS, False)
        self.repack_buft = _repack_buffer_type(self.cpu) if repack else None
        self.stores: list[_WeightStore] = []
        self.recorder = Recorder.from_env()

    # -- weights ----------------------------------------------------------------------------
    def load(self, gguf, names: Sequence[str] | None = None, gathered: Collection[str] = ()) -> Mapping[str, Tensor]:
        if self.cpu is None:
            raise BackendError("backend used after it was closed")
        infos = [gguf.tensors[n] for n in names] if names is not None else list(gguf.tensors.values())
        store = _WeightStore(gguf)
        self.stores.append(store)
        plain, repacked, copied = [], [], []
        for info in infos:
            if info.type not in MATMUL_TYPES and info.type != GGMLType.I32:
                raise BackendError(f"tensor {info.name!r} has type {info.type.name}, which the ggml backend does not compute with")
            if len(info.shape) > 4:
                raise BackendError(f"tensor {info.name!r} has {len(info.shape)} dims; at most 4 are supported")
            if info.paired_codes:  # Ollama's MXFP4: reordered into GGML's layout as it is copied in
                copied.append(info)
                continue
            wants_repack = self.repack_buft is not None and info.name not in gathered and _repackable(info)
            (repacked if wants_repack else plain).append(info)

        weights: dict[str, GGMLTensor] = {}

        def new_context(count: int):
            params = ggml.ggml_init_params(mem_size=ggml.ggml_tensor_overhead() * (count + 1), mem_buffer=None, no_alloc=True)
            ctx = ggml.ggml_init(params)
            store.contexts.append(ctx)
            return ctx

        def declare(ctx, info) -> GGMLTensor:
            ne = info.shape[::-1]
            ptr = ggml.ggml_new_tensor(ctx, int(info.type), len(ne), (ctypes.c_int64 * len(ne))(*ne))
            ggml.ggml_set_name(ptr, info.name.encode()[:63])
            tensor = GGMLTensor(ptr, tuple(info.shape), GGMLType(info.type), store, None)
            weights[info.name] = tensor
            return tensor

        if plain:
            # Zero-copy: one CPU buffer spans the whole mapping; tensors point into it.
            ctx = new_context(len(plain))
            base = gguf.address()
            buffer = ggml.ggml_backend_cpu_buffer_from_ptr(base, gguf.size)
            if not buffer:
                raise BackendError("could not wrap the model file mapping in a ggml buffer")
            store.buffers.append(buffer)
            ggml.ggml_backend_buffer_set_usage(buffer, ggml.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
            for info in plain:
                tensor = declare(ctx, info)
                status = ggml.ggml_backend_tensor_alloc(buffer, tensor.ptr, base + info.offset)
                if status != 0:
                    raise BackendError(f"could not place tensor {info.name!r} (status {status})")

        if repacked:
            # The repack buffer type rearranges blocks at upload for faster CPU matmuls; the
            # file pages read during the copy are dropped afterwards, so memory stays ~1x.
            ctx = new_context(len(repacked))
            tensors = [declare(ctx, info) for info in repacked]
            buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, self.repack_buft)
            if not buffer:
                raise BackendError("out of memory allocating repacked weights")
            store.buffers.append(buffer)
            ggml.ggml_backend_buffer_set_usage(buffer, ggml.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
            for info, tensor in zip(repacked, tensors):
                raw = gguf.tensor_bytes(info.name)
                ggml.ggml_backend_tensor_set(tensor.ptr, raw.ctypes.data, 0, info.nbytes)
                tensor.repacked = True
                gguf.advise_dontneed(info.offset, info.nbytes)

        if copied:
            ctx = new_context(len(copied))
            tensors = [declare(ctx, info) for info in copied]
            buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, self.cpu_buft)
            if not buffer:
                raise BackendError("out of memory allocating reordered weights")
            store.buffers.append(buffer)
            ggml.ggml_backend_buffer_set_usage(buffer, ggml.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
            for info, tensor in zip(copied, tensors):
                raw = gguf.tensor_bytes(info.name)
                step = mxfp4.BLOCK_BYTES << 16  # a chunk at a time: the reordered copy stays small
                for start in range(0, info.nbytes, step):
                    chunk = mxfp4.from_ollama(raw[start:start + step])
                    ggml.ggml_backend_tensor_set(tensor.ptr, chunk.ctypes.data, start, chunk.nbytes)
                gguf.advise_dontneed(info.offset, info.nbytes)
        return weights

    def zeros(self, shape: Sequence[int], dtype: GGMLType) -> Tensor:
        if self.cpu is None:
            raise BackendError("backend used after it was closed")
        shape = tuple(int(s) for s in shape)
        if dtype not in CACHE_TYPES or not 1 <= len(shape) <= 4 or any(s <= 0 for s in shape):
            raise BackendError(f"cannot allocate a {dtype.name} cache of shape {list(shape)}")
        store = _WeightStore(None)
        store.label = "cache of a closed model"
        self.stores.append(store)
        params = ggml.ggml_init_params(mem_size=ggml.ggml_tensor_overhead() * 2, mem_buffer=None, no_alloc=True)
        ctx = ggml.ggml_init(params)
        store.contexts.append(ctx)
        ne = shape[::-1]
        ptr = ggml.ggml_new_tensor(ctx, int(dtype), len(ne), (ctypes.c_int64 * len(ne))(*ne))
        buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, self.cpu_buft)
        if not buffer:
            store.free()
            raise BackendError(f"out of memory allocating a cache of shape {list(shape)}")
        store.buffers.append(buffer)
        ggml.ggml_backend_buffer_clear(buffer, 0)
        return GGMLTensor(ptr, shape, dtype, store, None)

    def free(self, tensors: Mapping[str, Tensor] | Tensor) -> None:
        """Release a set of loaded weights (or one cache); using them afterwards raises."""
        items = [tensors] if isinstance(tensors, Tensor) else list(tensors.values())
        for store in {id(t.owner): t.owner for t in items}.values():
            store.free()
            self.stores.remove(store)

    def context(self, reusable: bool = False, rows_apart: bool = False) -> Context:
        if self.cpu is None:
            raise BackendError("backend used after it was closed")
        ctx = GGMLContext(self, reusable, rows_apart)
        ctx.recorder = self.recorder
        return ctx

    def close(self) -> None:
        for store in self.stores:
            store.free()
        self.stores.clear()
        if self.allocr:
            ggml.ggml_gallocr_free(self.allocr)
            self.allocr = None
        if self.cpu:
            ggml.ggml_backend_free(self.cpu)
            self.cpu = None


def _repack_buffer_type(cpu_backend):
    """The CPU_REPACK extra buffer type, if this ggml build has one."""
    reg = ggml.ggml_backend_cpu_reg()
    address = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    device = ggml.ggml_backend_get_device(cpu_backend)
    bufts = get_extra(device)
    i = 0
    while bufts and bufts[i]:
        name = ggml.ggml_backend_buft_name(bufts[i])
        if name == b"CPU_REPACK":
            return bufts[i]
        i += 1
    return None


def _repackable(info) -> bool:
    """Whether ggml's CPU_REPACK buffer has an x86 layout for this weight.

    Mirrors ggml-cpu/repack.cpp's choice for x86 (AVX2: Q4_0, Q4_K, IQ4_NL, MXFP4; AVX-512:
    Q2_K; rows a multiple of 8). Uploading any other tensor into that buffer crashes ggml.
    """
    if len(info.shape) != 2 or info.shape[0] % 8:
        return False
    if info.type in (GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.IQ4_NL, GGMLType.MXFP4):
        return bool(ggml.ggml_cpu_has_avx2())
    if info.type == GGMLType.Q2_K:
        return bool(ggml.ggml_cpu_has_avx512())
    return False
