"""The ggml backend's step context: a ggml context (tensor metadata only), its graph, its
inputs, attention and KV-cache writes, and compute/rerun on the backend's allocator.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Mapping

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import BackendError, Context, Tensor
from pollama.ml.ggml.lib import ggml
from pollama.ml.ggml.tensor import CACHE_TYPES, GGMLTensor, _Owner, _rows_dense

if TYPE_CHECKING:
    from pollama.ml.ggml.backend import GGMLBackend


# Upper bound on tensors (ops and views) in one step's context; checked before creating one
# because running out inside ggml aborts.
MAX_TENSORS = 32768

_NP_TYPES = {np.dtype(np.float32): GGMLType.F32, np.dtype(np.int32): GGMLType.I32}


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
        self.allocated = False  # this graph's tensors placed by self.allocr (see _run)

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

    def input(self, array: np.ndarray, name: str | None = None, constant: bool = False) -> Tensor:
        self._check_open()
        self._check_refreshable(name, constant)
        array = np.ascontiguousarray(array)
        dtype = _NP_TYPES.get(array.dtype)
        if dtype is None:
            raise BackendError(f"inputs must be float32 or int32 arrays, got {array.dtype}")
        if not 1 <= array.ndim <= 4 or array.size == 0:
            raise BackendError(f"inputs must have 1 to 4 non-empty dims, got shape {array.shape}")
        return self._input(array, dtype, name)

    def _check_refreshable(self, name: str | None, constant: bool) -> None:
        # rerun() refreshes named inputs only: an unnamed one would silently keep its first data.
        if self.reusable and name is None and not constant:
            raise BackendError("an input of a reusable graph needs a name (rerun() gives it each step's data) "
                               "or constant=True (the same data every step)")

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
        self._check_refreshable(name, constant=False)
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
        self.allocated = False  # the graph just grew: place its tensors (again)
        return self.hand_back(self._run(), self.asked)

    def _run(self) -> list[np.ndarray]:
        backend = self.backend
        # A reusable context's allocator is its own, so a rerun of the same graph finds every
        # tensor where the last run placed it: placing them again only walks the graph (about
        # 0.1 ms a decode step). A shared allocator may have placed other graphs since.
        if not (self.reusable and self.allocated):
            if not ggml.ggml_gallocr_alloc_graph(self.allocr, self.graph):
                raise BackendError("could not allocate the compute graph (out of memory)")
            self.allocated = True
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
        missing = sorted(set(self.named) - set(arrays))
        if missing:  # each would keep the data of the step that built the graph
            raise BackendError(f"rerun() without new data for the inputs {', '.join(map(repr, missing))}")
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
