"""Quantize and dequantize rows with ggml's own C code (the quantizer llama.cpp and Ollama use).

Every ggml call here is checked in Python first: a bad type, a row length that is not a
whole number of blocks or a missing importance matrix would hit a GGML_ASSERT and abort
the process.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pollama.fs.ggml_types import GGMLType, block_size, type_size
from pollama.ml.ggml.lib import ggml

__all__ = [
    "NEEDS_IMATRIX",
    "QUANTIZABLE",
    "check_quantizable",
    "convert_rows",
    "default_threads",
    "dequantize_rows",
    "quantize_rows",
]

_T = GGMLType

# The types ggml_quantize_chunk has a case for (any other type falls through to an assert).
_CHUNK_TYPES = frozenset({
    _T.F32, _T.F16, _T.BF16,
    _T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q8_0, _T.MXFP4,
    _T.Q2_K, _T.Q3_K, _T.Q4_K, _T.Q5_K, _T.Q6_K, _T.TQ1_0, _T.TQ2_0,
    _T.IQ2_XXS, _T.IQ2_XS, _T.IQ2_S, _T.IQ3_XXS, _T.IQ3_S, _T.IQ1_S, _T.IQ1_M,
    _T.IQ4_NL, _T.IQ4_XS,
})

# ggml itself asserts an importance matrix only for IQ2_XXS, IQ2_XS and IQ1_S, but the
# other 1-3 bit IQ types come out unusable without one (llama.cpp's quantize tool refuses
# them too). We have no imatrix support, so all of them are refused.
NEEDS_IMATRIX = frozenset({
    _T.IQ1_S, _T.IQ1_M, _T.IQ2_XXS, _T.IQ2_XS, _T.IQ2_S, _T.IQ3_XXS, _T.IQ3_S,
})

QUANTIZABLE = _CHUNK_TYPES - NEEDS_IMATRIX
"""Types quantize_rows can produce (float types included: they are plain conversions)."""

_PLAIN = frozenset({_T.F32, _T.F16, _T.BF16})

# Float32 elements handed to one ggml call: bounds the scratch memory per thread (4 MiB)
# while keeping the per-call overhead negligible.
_CHUNK_ELEMENTS = 1 << 20


def default_threads() -> int:
    """CPUs this process may run on (the pool size used when `threads` is not given)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _ggml_type(t: int) -> GGMLType:
    try:
        return GGMLType(int(t))
    except ValueError:
        raise ValueError(f"unknown ggml type {t!r}") from None


def check_quantizable(ggml_type: int, cols: int) -> GGMLType:
    """Raise ValueError unless rows of `cols` floats can be quantized to `ggml_type` here."""
    t = _ggml_type(ggml_type)
    if t in NEEDS_IMATRIX:
        raise ValueError(
            f"quantization to {t.name} needs an importance matrix, which is not supported"
        )
    if t not in _CHUNK_TYPES:
        raise ValueError(f"ggml cannot quantize to {t.name}")
    bs = block_size(t)
    if cols <= 0 or cols % bs:
        raise ValueError(
            f"row length {cols} is not a multiple of the {t.name} block size {bs}"
        )
    return t


def _to_float_fn(t: GGMLType):
    traits = ggml.ggml_get_type_traits(int(t)).contents
    fn = traits.to_float
    # ggml leaves to_float NULL for types it never decodes (F32, Q8_K, integers); calling
    # a NULL function pointer would crash, so such types are refused.
    if not fn:
        raise ValueError(f"ggml cannot convert {t.name} to float")
    return fn


def _row_shape(shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 0 for d in shape):
        raise ValueError(f"bad tensor shape {list(shape)}")
    cols = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows, cols


def _as_raw(raw: np.ndarray, t: GGMLType, rows: int, cols: int) -> np.ndarray:
    raw = np.ascontiguousarray(np.asarray(raw)).reshape(-1).view(np.uint8)
    bs = block_size(t)
    if cols % bs:
        raise ValueError(f"row length {cols} is not a multiple of the {t.name} block size {bs}")
    need = rows * (cols // bs) * type_size(t)
    if raw.size != need:
        raise ValueError(f"{t.name} data of {rows}x{cols} needs {need} bytes, got {raw.size}")
    return raw


def dequantize_rows(raw: np.ndarray, ggml_type: int, shape: Sequence[int]) -> np.ndarray:
    """Decode the bytes of a tensor of `ggml_type` into float32 of PyTorch-order `shape`."""
    t = _ggml_type(ggml_type)
    rows, cols = _row_shape(shape)
    data = _as_raw(raw, t, rows, cols)
    if t == _T.F32:
        return data.view("<f4").astype(np.float32).reshape(shape)
    to_float = _to_float_fn(t)
    out = np.empty(rows * cols, dtype=np.float32)
    if out.size:
        to_float(data.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out.reshape(shape)


def quantize_rows(data: np.ndarray, ggml_type: int, *, threads: int | None = None) -> np.ndarray:
    """Quantize float32 rows [rows, cols] to `ggml_type`; uint8 [rows, row bytes] in GGUF layout."""
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"quantize_rows takes a 2-D array of rows, got shape {data.shape}")
    if data.dtype != np.float32:
        raise ValueError(f"quantize_rows takes float32 data, got {data.dtype}")
    data = np.ascontiguousarray(data)
    rows, cols = data.shape
    t = check_quantizable(ggml_type, cols)
    return _quantize(lambda r0, r1: data[r0:r1], rows, cols, t, threads, check_finite=False)


def convert_rows(
    raw: np.ndarray,
    src_type: int,
    dst_type: int,
    shape: Sequence[int],
    *,
    threads: int | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """Re-encode a tensor's bytes from `src_type` to `dst_type`, a chunk of rows at a time.

    The source is decoded to float32 chunk by chunk, so memory beyond the output stays
    bounded whatever the tensor size. With `check_finite`, NaN or infinite weights are
    refused for a quantized target (they would come out as garbage blocks).
    Returns uint8 [rows, row bytes].
    """
    s = _ggml_type(src_type)
    rows, cols = _row_shape(shape)
    src = _as_raw(raw, s, rows, cols)
    t = check_quantizable(dst_type, cols)
    if s == _T.F32:
        floats = src.view("<f4").reshape(rows, cols)

        def fetch(r0: int, r1: int) -> np.ndarray:
            return floats[r0:r1]
    else:
        to_float = _to_float_fn(s)
        src_row = cols // block_size(s) * type_size(s)

        def fetch(r0: int, r1: int) -> np.ndarray:
            buf = np.empty((r1 - r0, cols), dtype=np.float32)
            to_float(src.ctypes.data + r0 * src_row,
                     buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size)
            return buf

    return _quantize(fetch, rows, cols, t, threads, check_finite=check_finite and t not in _PLAIN)


def _quantize(
    fetch: Callable[[int, int], np.ndarray],
    rows: int,
    cols: int,
    t: GGMLType,
    threads: int | None,
    check_finite: bool,
) -> np.ndarray:
    row_bytes = cols // block_size(t) * type_size(t)
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    if rows == 0:
        return out
    threads = default_threads() if threads is None else max(1, int(threads))
    per_chunk = max(1, _CHUNK_ELEMENTS // cols)
    per_chunk = min(per_chunk, -(-rows // threads))  # at least one chunk per thread
    starts = range(0, rows, per_chunk)
    ggml.ggml_quantize_init(int(t))  # the tables of some types; thread-safe, once per type

    def work(r0: int) -> None:
        r1 = min(rows, r0 + per_chunk)
        src = np.ascontiguousarray(fetch(r0, r1), dtype=np.float32)
        if check_finite and not np.isfinite(src).all():
            bad = r0 + int(np.flatnonzero(~np.isfinite(src).all(axis=1))[0])
            raise ValueError(f"row {bad} holds NaN or infinite values, which cannot be quantized")
        n = ggml.ggml_quantize_chunk(
            int(t), src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            out.ctypes.data + r0 * row_bytes, 0, r1 - r0, cols, None,
        )
        assert n == (r1 - r0) * row_bytes, (n, r1 - r0, row_bytes)

    # ctypes releases the GIL around calls into a CDLL (and through CFUNCTYPE pointers such
    # as to_float), so the chunks run in parallel in plain threads.
    if threads == 1 or len(starts) == 1:
        for r0 in starts:
            work(r0)
    else:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            for f in [pool.submit(work, r0) for r0 in starts]:
                f.result()
    return out
