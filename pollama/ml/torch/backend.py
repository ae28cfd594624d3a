"""The reference backend: eager PyTorch ops on float32 weights.

It is the oracle the ggml backend is tested against, so it favours plain, checkable code over
speed: weights are dequantized to float32 at load, every op runs at once, and RoPE's angles are
computed the way ggml's CPU kernel computes them (float32, same order of operations).

It is also deliberately as strict as the ggml backend: misuse that ggml would reject (tensors
of two contexts in one op, an op on weights alone, more than 4 dims, a mask not made by
`attention_mask`, a second `compute`) raises here too, so model code that runs on the
reference also runs on ggml.

The backend (this file) loads and frees weights; its step contexts are in context.py, its
tensors and their ops in tensor.py, RoPE's tables in rope.py.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import torch

from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import Backend, BackendError, Context, Recorder, Tensor
from pollama.ml.torch.context import TorchContext
from pollama.ml.torch.quants import dequantize
from pollama.ml.torch.tensor import MAX_DIMS, TorchTensor, _Owner


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

    def zeros(self, shape: Sequence[int], dtype: GGMLType, layer: int | None = None) -> Tensor:
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
