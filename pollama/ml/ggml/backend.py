"""The production backend: GGML's CPU kernels through pollama's ctypes binding (lib.py).

The backend loads a GGUF file's weights (zero-copy from its mapping, or repacked for ggml's
CPU kernels), makes caches, and opens step contexts (context.py) whose tensors (tensor.py)
build each step's graph.
"""

from __future__ import annotations

import ctypes
import os
from typing import Collection, Mapping, Sequence

from pollama.fs import mxfp4
from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import Backend, BackendError, Context, Recorder, Tensor
from pollama.ml.ggml.context import MAX_TENSORS, GGMLContext
from pollama.ml.ggml.lib import ggml
from pollama.ml.ggml.tensor import CACHE_TYPES, MATMUL_TYPES, GGMLTensor, _Owner


def default_threads() -> int:
    """Threads for compute: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


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

        def allocate(infos, buft, what: str) -> list[GGMLTensor]:
            """Tensors for `infos` in a new weights buffer of `buft`, their data still to upload."""
            ctx = new_context(len(infos))
            tensors = [declare(ctx, info) for info in infos]
            buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft)
            if not buffer:
                raise BackendError(f"out of memory allocating {what}")
            store.buffers.append(buffer)
            ggml.ggml_backend_buffer_set_usage(buffer, ggml.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
            return tensors

        if repacked:
            # The repack buffer type rearranges blocks at upload for faster CPU matmuls; the
            # file pages read during the copy are dropped afterwards, so memory stays ~1x.
            tensors = allocate(repacked, self.repack_buft, "repacked weights")
            for info, tensor in zip(repacked, tensors):
                raw = gguf.tensor_bytes(info.name)
                ggml.ggml_backend_tensor_set(tensor.ptr, raw.ctypes.data, 0, info.nbytes)
                tensor.repacked = True
                gguf.advise_dontneed(info.offset, info.nbytes)

        if copied:
            tensors = allocate(copied, self.cpu_buft, "reordered weights")
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
