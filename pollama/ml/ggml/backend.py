"""The production backend: GGML's kernels through pollama's ctypes binding (lib.py).

The backend loads a GGUF file's weights (zero-copy from its mapping, or repacked for ggml's
CPU kernels), makes caches, and opens step contexts (context.py) whose tensors (tensor.py)
build each step's graph.

With a GPU device (devices.py: Vulkan in a `build.sh --vulkan` build) it places weights per
layer as llama.cpp and Ollama do: the last num_gpu repeating layers (`blk.N.`), their KV
caches, and, once every block is there, the output layer go to the device; the token
embeddings and the other layers stay on the CPU, and ggml_backend_sched splits each graph
between the two. With no layer on a device nothing changes: the CPU backend computes graphs
alone, as it does in a CPU-only build.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Collection, Mapping, Sequence

from pollama.fs import mxfp4
from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import Backend, BackendError, Context, Recorder, Tensor
from pollama.ml.ggml.context import MAX_TENSORS, GGMLContext
from pollama.ml.ggml.devices import Device, block_of, gpu_devices, layers_that_fit
from pollama.ml.ggml.lib import ggml
from pollama.ml.ggml.tensor import CACHE_TYPES, MATMUL_TYPES, GGMLTensor, _Owner


log = logging.getLogger(__name__)

# Device memory kept free for compute buffers when num_gpu is left to the estimate (-1): a
# rough figure; the weights and KV cache of each layer are counted exactly.
GRAPH_RESERVE = 512 << 20


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
        self.device_bytes = 0  # of its buffers, those on a GPU device
        self.host_bytes = 0  # on the CPU

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
    """GGML on the CPU, with weights zero-copy from the GGUF mapping or repacked for speed, and
    the last num_gpu layers on a GPU device where the build has one."""

    name = "ggml"

    def __init__(self, n_threads: int | None = None, repack: bool = True, flash_attention: bool = False,
                 exact_gelu: bool = False, num_gpu: int = -1, device: Device | None = None,
                 context_cells: int = 0, kv_bytes: int = 2):
        """num_gpu: layers on the device (Ollama's option): -1 as many as fit, 0 none. device:
        which one (default: the first the build offers). context_cells and kv_bytes size the
        KV cache of a layer for that estimate."""
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
        self.num_gpu = num_gpu
        self.device = (device or next(iter(gpu_devices()), None)) if num_gpu != 0 else None
        self.context_cells, self.kv_bytes = context_cells, kv_bytes
        self.gpu = self.gpu_buft = self.sched = None  # made when a first layer goes to the device
        self.device_blocks: set[int] = set()  # repeating layers whose weights (and caches) are there
        self.layers_offloaded = self.layers_total = 0  # of the model loaded last, output layer counted
        self.device_bytes = 0  # weights and caches placed on the device
        self.host_bytes = 0  # weights and caches on the CPU
        self.weights_on_device: set[str] = set()  # names, of every file loaded

    def memory(self) -> tuple[int, int]:
        if self.layers_total and self.layers_offloaded >= self.layers_total:
            return self.device_bytes, self.device_bytes  # Ollama: a full offload is "100% GPU"
        return self.host_bytes + self.device_bytes, self.device_bytes

    # -- placement --------------------------------------------------------------------------
    def _on_device(self, gguf, infos, gathered: Collection[str]) -> set[str]:
        """Names of the tensors of this file that go to the device."""
        if self.device is None:
            return set()
        blocks: dict[int, int] = {}
        others = 0
        for info in infos:
            block = block_of(info.name)
            if block is not None:
                blocks[block] = blocks.get(block, 0) + info.nbytes
            elif info.name not in gathered:
                others += info.nbytes
        n_blocks = max(blocks) + 1 if blocks else 0
        if self.num_gpu < 0:
            kv = self._kv_bytes_per_layer(gguf.metadata)
            free, _ = self.device.memory()
            n = layers_that_fit([blocks.get(i, 0) + kv for i in range(n_blocks)], others, free - GRAPH_RESERVE)
        else:
            n = min(self.num_gpu, n_blocks + 1)
        first = n_blocks - min(n, n_blocks)
        if blocks:
            self.device_blocks = set(range(first, n_blocks))
            self.layers_offloaded, self.layers_total = n, n_blocks + 1
            log.info("offloaded %d/%d layers to %s (%s)", n, n_blocks + 1, self.device.name, self.device.description)
        if n == 0:
            return set()
        self._start_device()
        chosen = [info for info in infos
                  if (block := block_of(info.name)) is not None and block >= first
                  or block is None and info.name not in gathered and n > n_blocks]
        return {info.name for info in chosen if self._device_holds(info)}

    def _device_holds(self, info) -> bool:
        """Whether the device can compute with this weight: a tensor beyond its buffer limits (a
        big output projection on lavapipe, whose storage buffers stop at 128 MiB) stays on the
        CPU, as llama.cpp keeps it; ggml's scheduler would abort on it otherwise."""
        params = ggml.ggml_init_params(mem_size=ggml.ggml_tensor_overhead() * 2, mem_buffer=None, no_alloc=True)
        ctx = ggml.ggml_init(params)
        try:
            ne = info.shape[::-1]
            ptr = ggml.ggml_new_tensor(ctx, int(info.type), len(ne), (ctypes.c_int64 * len(ne))(*ne))
            holds = bool(ggml.ggml_backend_dev_supports_op(self.device.handle, ptr))
        finally:
            ggml.ggml_free(ctx)
        if not holds:
            log.info("%s stays on the CPU: %s cannot compute with it", info.name, self.device.name)
        return holds

    def _kv_bytes_per_layer(self, metadata) -> int:
        arch = metadata.get("general.architecture", "")
        key = lambda name, default=0: metadata.get(f"{arch}.{name}", default)  # noqa: E731
        heads = key("attention.head_count", 1)
        heads = max(heads) if isinstance(heads, (list, tuple)) else heads
        kv_heads = key("attention.head_count_kv", heads)
        kv_heads = max(kv_heads) if isinstance(kv_heads, (list, tuple)) else kv_heads
        head_dim = key("attention.key_length", key("embedding_length") // max(1, heads))
        v_dim = key("attention.value_length", head_dim)
        return self.context_cells * kv_heads * (head_dim + v_dim) * self.kv_bytes

    def _start_device(self) -> None:
        if self.sched is not None:
            return
        self.gpu = ggml.ggml_backend_dev_init(self.device.handle, None)
        if not self.gpu:
            raise BackendError(f"could not initialise ggml device {self.device.name} ({self.device.description})")
        self.gpu_buft = ggml.ggml_backend_dev_buffer_type(self.device.handle)
        self.sched = self.new_sched()

    def new_sched(self):
        """A scheduler over [device, CPU] (the CPU last, as ggml requires); no op offload: an op
        stays with its weights (llama.cpp's default copies CPU weights to the device for big
        batches, which only pays on a real GPU with fast transfers)."""
        backends = (ctypes.c_void_p * 2)(self.gpu, self.cpu)
        sched = ggml.ggml_backend_sched_new(backends, None, 2, MAX_TENSORS, False, False)
        if not sched:
            raise BackendError("could not make ggml's backend scheduler")
        return sched

    # -- weights ----------------------------------------------------------------------------
    def load(self, gguf, names: Sequence[str] | None = None, gathered: Collection[str] = ()) -> Mapping[str, Tensor]:
        if self.cpu is None:
            raise BackendError("backend used after it was closed")
        infos = [gguf.tensors[n] for n in names] if names is not None else list(gguf.tensors.values())
        store = _WeightStore(gguf)
        self.stores.append(store)
        plain, repacked, copied, on_device = [], [], [], []
        for info in infos:
            if info.type not in MATMUL_TYPES and info.type != GGMLType.I32:
                raise BackendError(f"tensor {info.name!r} has type {info.type.name}, which the ggml backend does not compute with")
            if len(info.shape) > 4:
                raise BackendError(f"tensor {info.name!r} has {len(info.shape)} dims; at most 4 are supported")
        device_names = self._on_device(gguf, infos, gathered)
        self.weights_on_device |= device_names
        store.host_bytes = sum(info.nbytes for info in infos if info.name not in device_names)
        self.host_bytes += store.host_bytes
        for info in infos:
            if info.name in device_names:
                on_device.append(info)
                continue
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
            if buft == self.gpu_buft:
                store.device_bytes += ggml.ggml_backend_buffer_get_size(buffer)
            return tensors

        def upload(info, tensor) -> None:
            raw = gguf.tensor_bytes(info.name)
            if info.paired_codes:  # Ollama's MXFP4, reordered into GGML's layout
                step = mxfp4.BLOCK_BYTES << 16  # a chunk at a time: the reordered copy stays small
                for start in range(0, info.nbytes, step):
                    chunk = mxfp4.from_ollama(raw[start:start + step])
                    ggml.ggml_backend_tensor_set(tensor.ptr, chunk.ctypes.data, start, chunk.nbytes)
            else:
                ggml.ggml_backend_tensor_set(tensor.ptr, raw.ctypes.data, 0, info.nbytes)
            # The file pages read during the copy are dropped: memory stays ~1x the file.
            gguf.advise_dontneed(info.offset, info.nbytes)

        if on_device:
            for info, tensor in zip(on_device, allocate(on_device, self.gpu_buft, f"weights on {self.device.name}")):
                upload(info, tensor)
            self.device_bytes += store.device_bytes

        if repacked:
            # The repack buffer type rearranges blocks at upload for faster CPU matmuls.
            for info, tensor in zip(repacked, allocate(repacked, self.repack_buft, "repacked weights")):
                upload(info, tensor)
                tensor.repacked = True

        if copied:
            for info, tensor in zip(copied, allocate(copied, self.cpu_buft, "reordered weights")):
                upload(info, tensor)
        return weights

    def zeros(self, shape: Sequence[int], dtype: GGMLType, layer: int | None = None) -> Tensor:
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
        # A layer's cache lives where its weights do.
        on_device = layer is not None and layer in self.device_blocks and self.gpu_buft is not None
        buffer = ggml.ggml_backend_alloc_ctx_tensors_from_buft(ctx, self.gpu_buft if on_device else self.cpu_buft)
        if not buffer:
            store.free()
            raise BackendError(f"out of memory allocating a cache of shape {list(shape)}")
        store.buffers.append(buffer)
        ggml.ggml_backend_buffer_clear(buffer, 0)
        if on_device:
            store.device_bytes = ggml.ggml_backend_buffer_get_size(buffer)
            self.device_bytes += store.device_bytes
        else:
            store.host_bytes = ggml.ggml_backend_buffer_get_size(buffer)
            self.host_bytes += store.host_bytes
        return GGMLTensor(ptr, shape, dtype, store, None)

    def free(self, tensors: Mapping[str, Tensor] | Tensor) -> None:
        """Release a set of loaded weights (or one cache); using them afterwards raises."""
        items = [tensors] if isinstance(tensors, Tensor) else list(tensors.values())
        for store in {id(t.owner): t.owner for t in items}.values():
            if store.alive:
                self.device_bytes -= store.device_bytes
                self.host_bytes -= store.host_bytes
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
        self.device_bytes = self.host_bytes = 0
        if self.allocr:
            ggml.ggml_gallocr_free(self.allocr)
            self.allocr = None
        if self.sched:
            ggml.ggml_backend_sched_free(self.sched)
            self.sched = None
        if self.gpu:
            ggml.ggml_backend_free(self.gpu)
            self.gpu = None
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
