"""pollama's own ctypes binding of ggml: the functions the backend calls, typed.

Only ml/ggml imports this. It loads libggml-base and libggml-cpu as built by
`native/build.sh` (setup.sh runs it): from $POLLAMA_GGML_LIB_DIR, else from
`<venv>/lib/pollama-ggml`. A build whose BUILD file names GPU backends (`build.sh --vulkan`
makes one with `backends: vulkan`) has their libraries too: they are loaded beside, and
`gpu_regs` holds their registration functions (devices.py asks them for devices). A build that is missing, of another ggml version, or made for CPU
features this machine lacks is refused with an ImportError saying what to run, never loaded
(running it would die with SIGILL somewhere inside a matmul).

Every signature below is checked against ggml 0.25.3's headers; a wrong one corrupts
arguments silently, so a function is added here with its C declaration beside it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int, c_int32, c_int64, c_size_t, c_uint8, c_void_p
from pathlib import Path
from types import SimpleNamespace

from pollama import envconfig
from pollama.ml.ggml.cpu import isa_flags

VERSION = "0.25.3"
LIB_DIR_ENV = "POLLAMA_GGML_LIB_DIR"

# ggml forks gdb for a backtrace before it aborts; a server must never hang on that.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

MAX_DIMS = 4
MAX_SRC = 10
MAX_OP_PARAMS = 64
MAX_NAME = 64


class ggml_tensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h): read for shapes, strides, views and buffers."""

    _fields_ = [
        ("type", c_int),
        ("buffer", c_void_p),
        ("ne", c_int64 * MAX_DIMS),
        ("nb", c_size_t * MAX_DIMS),
        ("op", c_int),
        ("op_params", c_int32 * (MAX_OP_PARAMS // 4)),
        ("flags", c_int32),
        ("src", c_void_p * MAX_SRC),
        ("view_src", c_void_p),
        ("view_offs", c_size_t),
        ("data", c_void_p),
        ("name", ctypes.c_char * MAX_NAME),
        ("extra", c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


class ggml_init_params(ctypes.Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


ggml_to_float_t = ctypes.CFUNCTYPE(None, c_void_p, POINTER(c_float), c_int64)


class ggml_type_traits(ctypes.Structure):
    _fields_ = [
        ("type_name", c_char_p),
        ("blck_size", c_int64),
        ("blck_size_interleave", c_int64),
        ("type_size", c_size_t),
        ("is_quantized", c_bool),
        ("to_float", ggml_to_float_t),
        ("from_float_ref", c_void_p),
    ]


ggml_log_callback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

T = POINTER(ggml_tensor)
P = c_void_p  # every opaque handle: context, graph, backend, buffer, buffer type, allocator

# name: (restype, argtypes). Grouped as ggml.h, ggml-alloc.h, ggml-backend.h, ggml-cpu.h.
_SIGNATURES = {
    # ggml.h: contexts, graphs, types
    "ggml_version": (c_char_p, []),
    "ggml_init": (P, [ggml_init_params]),
    "ggml_free": (None, [P]),
    "ggml_tensor_overhead": (c_size_t, []),
    "ggml_graph_overhead_custom": (c_size_t, [c_size_t, c_bool]),
    "ggml_new_graph_custom": (P, [P, c_size_t, c_bool]),
    "ggml_build_forward_expand": (None, [P, T]),
    "ggml_graph_n_nodes": (c_int, [P]),
    "ggml_type_size": (c_size_t, [c_int]),
    "ggml_blck_size": (c_int64, [c_int]),
    "ggml_element_size": (c_size_t, [T]),
    "ggml_get_type_traits": (POINTER(ggml_type_traits), [c_int]),
    "ggml_quantize_init": (None, [c_int]),
    "ggml_quantize_chunk": (c_size_t, [c_int, POINTER(c_float), c_void_p, c_int64, c_int64, c_int64, POINTER(c_float)]),
    "ggml_log_set": (None, [ggml_log_callback, c_void_p]),
    # ggml.h: tensors
    "ggml_new_tensor": (T, [P, c_int, c_int, POINTER(c_int64)]),
    "ggml_new_tensor_1d": (T, [P, c_int, c_int64]),
    "ggml_new_tensor_2d": (T, [P, c_int, c_int64, c_int64]),
    "ggml_new_tensor_3d": (T, [P, c_int, c_int64, c_int64, c_int64]),
    "ggml_new_tensor_4d": (T, [P, c_int, c_int64, c_int64, c_int64, c_int64]),
    "ggml_set_name": (T, [T, c_char_p]),
    "ggml_set_input": (None, [T]),
    "ggml_set_output": (None, [T]),
    "ggml_prec_set_acc": (c_bool, [T, c_int]),
    # ggml.h: ops
    "ggml_add": (T, [P, T, T]),
    "ggml_sub": (T, [P, T, T]),
    "ggml_mul": (T, [P, T, T]),
    "ggml_scale": (T, [P, T, c_float]),
    "ggml_scale_bias": (T, [P, T, c_float, c_float]),
    "ggml_silu": (T, [P, T]),
    "ggml_gelu": (T, [P, T]),
    "ggml_gelu_erf": (T, [P, T]),
    "ggml_tanh": (T, [P, T]),
    "ggml_sigmoid": (T, [P, T]),
    "ggml_swiglu_split": (T, [P, T, T]),
    "ggml_geglu_split": (T, [P, T, T]),
    "ggml_swiglu_oai": (T, [P, T, T, c_float, c_float]),  # (ctx, a, b, alpha, limit)
    "ggml_norm": (T, [P, T, c_float]),
    "ggml_rms_norm": (T, [P, T, c_float]),
    "ggml_mul_mat": (T, [P, T, T]),
    "ggml_mul_mat_id": (T, [P, T, T, T]),  # (ctx, as [K, M, n_expert], b [K, n_used or 1, t], ids I32 [n_used, t])
    "ggml_add_id": (T, [P, T, T, T]),  # (ctx, a [M, n_used, t], b [M, n_expert], ids I32 [n_used, t])
    "ggml_div": (T, [P, T, T]),
    "ggml_soft_max": (T, [P, T]),
    "ggml_sum_rows": (T, [P, T]),
    "ggml_argsort_top_k": (T, [P, T, c_int]),  # argsort descending, then a view of the first k
    "ggml_get_rows": (T, [P, T, T]),
    "ggml_set_rows": (T, [P, T, T, T]),
    "ggml_cast": (T, [P, T, c_int]),
    "ggml_cont": (T, [P, T]),
    "ggml_concat": (T, [P, T, T, c_int]),
    "ggml_transpose": (T, [P, T]),
    "ggml_permute": (T, [P, T, c_int, c_int, c_int, c_int]),
    "ggml_reshape_1d": (T, [P, T, c_int64]),
    "ggml_reshape_2d": (T, [P, T, c_int64, c_int64]),
    "ggml_reshape_3d": (T, [P, T, c_int64, c_int64, c_int64]),
    "ggml_reshape_4d": (T, [P, T, c_int64, c_int64, c_int64, c_int64]),
    "ggml_view_1d": (T, [P, T, c_int64, c_size_t]),
    "ggml_view_2d": (T, [P, T, c_int64, c_int64, c_size_t, c_size_t]),
    "ggml_view_3d": (T, [P, T, c_int64, c_int64, c_int64, c_size_t, c_size_t, c_size_t]),
    "ggml_view_4d": (T, [P, T, c_int64, c_int64, c_int64, c_int64, c_size_t, c_size_t, c_size_t, c_size_t]),
    "ggml_soft_max_ext": (T, [P, T, T, c_float, c_float]),
    "ggml_flash_attn_ext": (T, [P, T, T, T, T, c_float, c_float, c_float]),
    # void (a, sinks): a is the soft_max_ext / flash_attn_ext result; sinks F32 [n_head].
    "ggml_soft_max_add_sinks": (None, [T, T]),
    "ggml_flash_attn_ext_add_sinks": (None, [T, T]),
    # (ctx, a, positions, freq_factors, n_dims, mode, n_ctx_orig, freq_base, freq_scale,
    #  ext_factor, attn_factor, beta_fast, beta_slow); rope_multi adds sections[4] after n_dims.
    "ggml_rope_ext": (T, [P, T, T, T, c_int, c_int, c_int] + [c_float] * 6),
    "ggml_rope_multi": (T, [P, T, T, T, c_int, POINTER(c_int), c_int, c_int] + [c_float] * 6),
    # ggml-alloc.h
    "ggml_gallocr_new": (P, [P]),
    "ggml_gallocr_free": (None, [P]),
    "ggml_gallocr_alloc_graph": (c_bool, [P, P]),
    "ggml_backend_alloc_ctx_tensors_from_buft": (P, [P, P]),
    # ggml-backend.h
    "ggml_backend_free": (None, [P]),
    "ggml_backend_get_device": (P, [P]),
    "ggml_backend_graph_compute": (c_int, [P, P]),
    "ggml_backend_reg_get_proc_address": (c_void_p, [P, c_char_p]),
    "ggml_backend_buft_name": (c_char_p, [P]),
    "ggml_backend_buffer_free": (None, [P]),
    "ggml_backend_buffer_clear": (None, [P, c_uint8]),
    "ggml_backend_buffer_set_usage": (None, [P, c_int]),
    "ggml_backend_tensor_alloc": (c_int, [P, T, c_void_p]),
    "ggml_backend_tensor_set": (None, [T, c_void_p, c_size_t, c_size_t]),
    "ggml_backend_tensor_get": (None, [T, c_void_p, c_size_t, c_size_t]),
    "ggml_backend_name": (c_char_p, [P]),
    "ggml_backend_buffer_get_size": (c_size_t, [P]),
    "ggml_backend_buffer_is_host": (c_bool, [P]),
    # ggml-backend.h: devices of a backend registration (every pointer a c_void_p: a narrower
    # restype truncates it)
    "ggml_backend_reg_name": (c_char_p, [P]),
    "ggml_backend_reg_dev_count": (c_size_t, [P]),
    "ggml_backend_reg_dev_get": (P, [P, c_size_t]),
    "ggml_backend_dev_name": (c_char_p, [P]),
    "ggml_backend_dev_description": (c_char_p, [P]),
    "ggml_backend_dev_memory": (None, [P, POINTER(c_size_t), POINTER(c_size_t)]),
    "ggml_backend_dev_type": (c_int, [P]),  # enum ggml_backend_dev_type
    "ggml_backend_dev_init": (P, [P, c_char_p]),
    "ggml_backend_dev_buffer_type": (P, [P]),
    "ggml_backend_dev_supports_op": (c_bool, [P, T]),
    # ggml-backend.h: the scheduler, which splits one graph between backends (last: the CPU)
    # (backends, bufts or NULL, n_backends, graph_size, parallel, op_offload)
    "ggml_backend_sched_new": (P, [POINTER(c_void_p), POINTER(c_void_p), c_int, c_size_t, c_bool, c_bool]),
    "ggml_backend_sched_free": (None, [P]),
    "ggml_backend_sched_reset": (None, [P]),
    "ggml_backend_sched_alloc_graph": (c_bool, [P, P]),
    "ggml_backend_sched_graph_compute": (c_int, [P, P]),
    "ggml_backend_sched_get_n_splits": (c_int, [P]),
    "ggml_backend_sched_get_n_copies": (c_int, [P]),
    "ggml_backend_sched_get_buffer_size": (c_size_t, [P, P]),
    "ggml_backend_sched_get_tensor_backend": (P, [P, T]),
    # ggml-cpu.h
    "ggml_backend_cpu_init": (P, []),
    "ggml_backend_cpu_reg": (P, []),
    "ggml_backend_cpu_set_n_threads": (None, [P, c_int]),
    "ggml_backend_cpu_buffer_type": (P, []),
    "ggml_backend_cpu_buffer_from_ptr": (P, [c_void_p, c_size_t]),
    "ggml_cpu_has_avx2": (c_int, []),
    "ggml_cpu_has_avx512": (c_int, []),
}

# GPU backend libraries a build may have: BUILD's `backends` name -> registration function.
_GPU_REGS = {"vulkan": "ggml_backend_vk_reg"}

_CONSTANTS = {
    "GGML_BACKEND_DEVICE_TYPE_CPU": 0,  # enum ggml_backend_dev_type
    "GGML_BACKEND_DEVICE_TYPE_GPU": 1,
    "GGML_BACKEND_DEVICE_TYPE_IGPU": 2,
    "GGML_PREC_F32": 10,  # enum ggml_prec
    "GGML_BACKEND_BUFFER_USAGE_WEIGHTS": 1,  # enum ggml_backend_buffer_usage
    "GGML_TYPE_COUNT": 43,  # enum ggml_type
}

def default_lib_dir() -> Path:
    return Path(sys.prefix) / "lib" / "pollama-ggml"


def _check_build(lib_dir: Path) -> tuple[str, list[str]]:
    """The build's variant and GPU backends, after checking it exists, is this version and fits
    this CPU."""
    fix = "run ./setup.sh to build ggml for this machine"
    build_file = lib_dir / "BUILD"
    if not build_file.is_file():
        raise ImportError(f"no ggml build in {lib_dir} ({fix}, or set {LIB_DIR_ENV})")
    fields = dict(line.split(":", 1) for line in build_file.read_text().splitlines() if ":" in line)
    version = fields.get("version", "").strip()
    if version != VERSION:
        raise ImportError(f"the ggml build in {lib_dir} is version {version or 'unknown'}, pollama needs {VERSION} ({fix})")
    missing = set(fields.get("features", "").split()) - isa_flags()
    if missing:
        raise ImportError(
            f"the ggml build in {lib_dir} was made for a CPU with {' '.join(sorted(missing))}, which this one lacks ({fix})"
        )
    backends = fields.get("backends", "").split()
    unknown = [b for b in backends if b not in _GPU_REGS or not (lib_dir / f"libggml-{b}.so").is_file()]
    if unknown:
        raise ImportError(f"the ggml build in {lib_dir} names backends it lacks or pollama does not know: {' '.join(unknown)} ({fix})")
    return fields.get("variant", "").strip(), backends


def _load() -> SimpleNamespace:
    lib_dir = Path(envconfig.ggml_lib_dir() or default_lib_dir())
    variant, backends = _check_build(lib_dir)
    # RTLD_GLOBAL, base first: libggml-cpu finds libggml-base by its soname among loaded ones.
    libs = [ctypes.CDLL(str(lib_dir / name), mode=ctypes.RTLD_GLOBAL) for name in ("libggml-base.so", "libggml-cpu.so")]
    ns = SimpleNamespace(**_CONSTANTS, lib_dir=lib_dir, variant=variant, backends=backends, gpu_regs={})
    for backend in backends:
        # Loading does not touch a device: the registration function does, when devices.py
        # first asks (a Vulkan loader without a driver answers NULL there, not at load).
        gpu = ctypes.CDLL(str(lib_dir / f"libggml-{backend}.so"), mode=ctypes.RTLD_GLOBAL)
        reg = getattr(gpu, _GPU_REGS[backend])  # ggml_backend_reg_t fn(void)
        reg.restype, reg.argtypes = c_void_p, []
        ns.gpu_regs[backend] = reg
    ns.ggml_init_params = ggml_init_params
    ns.ggml_log_callback = ggml_log_callback
    for name, (restype, argtypes) in _SIGNATURES.items():
        for lib in libs:
            fn = getattr(lib, name, None)
            if fn is not None:
                break
        else:
            raise ImportError(f"{name} is missing from the ggml build in {lib_dir}")
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(ns, name, fn)
    loaded = ns.ggml_version().decode()
    if loaded != VERSION:
        raise ImportError(f"the ggml libraries in {lib_dir} are version {loaded}, pollama needs {VERSION}")
    return ns


ggml = _load()


_log = logging.getLogger("pollama.ggml")
# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 cont (continues the previous line).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR, 5: logging.DEBUG}


@ggml_log_callback
def _forward_log(level: int, text: bytes, _user: int) -> None:
    # ggml prints to stderr by default (e.g. a line per repacked tensor); route it to logging.
    _log.log(_LEVELS.get(level, logging.DEBUG), "%s", text.decode(errors="replace").rstrip())


ggml.ggml_log_set(_forward_log, None)
