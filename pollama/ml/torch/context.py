"""The reference backend's step context: inputs, masks, attention, KV-cache writes and views;
every op has already run by the time it returns, so compute() only hands the values back.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np
import torch

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import BackendError, Context, Tensor
from pollama.ml.torch.tensor import MAX_DIMS, TorchTensor, _Owner

if TYPE_CHECKING:
    from pollama.ml.torch.backend import TorchBackend


_NP_TYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int32): torch.int32}


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

    def input(self, array: np.ndarray, name: str | None = None, constant: bool = False) -> Tensor:
        """An input tensor from a float32 or int32 numpy array (copied; no graph is rerun here)."""
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
