"""Atomic GGUF writer on top of `gguf.GGUFWriter`, with exact metadata types.

Tensors are written one at a time: the header and every offset follow from each tensor's
type and shape alone, so a tensor's data can be a `LazyTensor`, made only when the writer
reaches it and dropped once written. Converting or quantizing a model then needs memory
for about one tensor, not for the whole output.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from pollama.fs.ggml_types import GGMLType, tensor_nbytes
from pollama.fs.gguf import (
    GGML_MAX_DIMS,
    GGML_MAX_NAME,
    MAX_ALIGNMENT,
    ArrayType,
    GGUFValueType,
)

__all__ = ["LazyTensor", "write_gguf"]

_V = GGUFValueType
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_INT_RANGE = {
    _V.UINT8: (0, 2**8 - 1),
    _V.INT8: (-(2**7), 2**7 - 1),
    _V.UINT16: (0, 2**16 - 1),
    _V.INT16: (-(2**15), 2**15 - 1),
    _V.UINT32: (0, 2**32 - 1),
    _V.INT32: (-(2**31), 2**31 - 1),
    _V.UINT64: (0, 2**64 - 1),
    _V.INT64: (-(2**63), 2**63 - 1),
}
_NUMPY_DTYPE = {
    _V.UINT8: "<u1",
    _V.INT8: "<i1",
    _V.UINT16: "<u2",
    _V.INT16: "<i2",
    _V.UINT32: "<u4",
    _V.INT32: "<i4",
    _V.UINT64: "<u8",
    _V.INT64: "<i8",
    _V.FLOAT32: "<f4",
    _V.FLOAT64: "<f8",
    _V.BOOL: "<u1",
}
_FROM_NUMPY = {np.dtype(v).newbyteorder("="): k for k, v in _NUMPY_DTYPE.items() if k != _V.BOOL}
_FROM_NUMPY[np.dtype(bool)] = _V.BOOL

# Plain (unquantized) tensor types and the numpy dtype their elements are stored as.
_PLAIN_TENSOR_DTYPE = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("<i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}


@dataclass(frozen=True)
class LazyTensor:
    """A tensor's data made on demand, when the writer reaches it.

    `load()` returns what an eager tensor would hold: raw uint8 bytes in the tensor's
    type, or numbers to convert. `written()`, if given, runs once those bytes are in the
    file (to drop a memory-mapped source's pages, or to report progress).
    """

    load: Callable[[], Any]
    written: Callable[[], None] | None = None


def _encode(s: str | bytes) -> bytes:
    # surrogateescape undoes the reader's handling of non-UTF-8 token bytes.
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def _int_type(values: Sequence[int]) -> GGUFValueType:
    lo, hi = min(values, default=0), max(values, default=0)
    if lo >= -(2**31) and hi < 2**31:
        return _V.INT32
    if lo >= -(2**63) and hi < 2**63:
        return _V.INT64
    return _V.UINT64


def _infer(value: Any, key: str) -> tuple[GGUFValueType, ArrayType | None]:
    """GGUF type for a Python value (gguf-py's conventions: int -> INT32, float -> FLOAT32)."""
    if isinstance(value, (bool, np.bool_)):
        return _V.BOOL, None
    if isinstance(value, np.generic):
        t = _FROM_NUMPY.get(value.dtype.newbyteorder("="))
        if t is None:
            raise ValueError(f"metadata key '{key}': unsupported numpy type {value.dtype}")
        return t, None
    if isinstance(value, int):
        return _int_type([value]), None
    if isinstance(value, float):
        return _V.FLOAT32, None
    if isinstance(value, (str, bytes)):
        return _V.STRING, None
    if isinstance(value, (list, tuple, np.ndarray)):
        return _V.ARRAY, _infer_elements(value, key)
    raise ValueError(f"metadata key '{key}': cannot store a {type(value).__name__} in GGUF")


def _infer_elements(values: Any, key: str) -> ArrayType:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"metadata key '{key}': arrays must be one-dimensional")
        t = _FROM_NUMPY.get(values.dtype.newbyteorder("="))
        if t is None:
            if values.dtype.kind in "US":
                return _V.STRING
            raise ValueError(f"metadata key '{key}': unsupported numpy dtype {values.dtype}")
        return t
    if len(values) == 0:
        return _V.INT32  # any type will do; gguf-py's convention for ints
    if all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        return [_infer_elements(v, key) for v in values]
    kinds = {_infer(v, key)[0] for v in values}
    if kinds <= {_V.BOOL}:
        return _V.BOOL
    if kinds <= {_V.STRING}:
        return _V.STRING
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return _int_type([int(v) for v in values])
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return _V.FLOAT32
    raise ValueError(f"metadata key '{key}': array mixes element types")


def _check_scalar(value: Any, vtype: GGUFValueType, key: str) -> Any:
    if vtype in _INT_RANGE:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"metadata key '{key}': {vtype.name} needs an int, got {value!r}")
        lo, hi = _INT_RANGE[vtype]
        if not lo <= int(value) <= hi:
            raise ValueError(f"metadata key '{key}': {value} is out of range for {vtype.name}")
        return int(value)
    if vtype in (_V.FLOAT32, _V.FLOAT64):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise ValueError(f"metadata key '{key}': {vtype.name} needs a number, got {value!r}")
        return float(value)
    if vtype == _V.BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"metadata key '{key}': BOOL needs a bool, got {value!r}")
        return bool(value)
    if vtype == _V.STRING:
        if not isinstance(value, (str, bytes)):
            raise ValueError(f"metadata key '{key}': STRING needs a str, got {value!r}")
        return _encode(value)
    raise ValueError(f"metadata key '{key}': unknown value type {vtype!r}")


def _pack_array(values: Any, etype: ArrayType, key: str) -> bytes:
    """Element type, count and elements of one array (without the ARRAY tag)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise ValueError(f"metadata key '{key}': ARRAY needs a list, got {type(values).__name__}")
    n = len(values)
    if isinstance(etype, list):  # array of arrays, one element type per inner array
        if len(etype) != n:
            raise ValueError(f"metadata key '{key}': element types don't match the nested array")
        parts = [_U32.pack(_V.ARRAY), _U64.pack(n)]
        parts += [_pack_array(v, t, key) for v, t in zip(values, etype)]
        return b"".join(parts)
    etype = _V(int(etype))
    head = _U32.pack(etype) + _U64.pack(n)
    if etype == _V.STRING:
        parts = [head]
        for s in values:
            if not isinstance(s, (str, bytes)):
                raise ValueError(f"metadata key '{key}': string array holds {s!r}")
            b = _encode(s)
            parts.append(_U64.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if etype == _V.ARRAY:
        raise ValueError(f"metadata key '{key}': nested arrays need a list of element types")
    if etype == _V.BOOL:
        if not all(isinstance(v, (bool, np.bool_)) for v in values):
            raise ValueError(f"metadata key '{key}': BOOL array holds non-bool values")
        return head + np.asarray(values, dtype=bool).astype("<u1").tobytes()
    if etype in _INT_RANGE:
        lo, hi = _INT_RANGE[etype]
        if isinstance(values, np.ndarray):
            ok = values.dtype.kind in "iu"
            low, high = (int(values.min()), int(values.max())) if n and ok else (0, 0)
        else:
            ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
            low, high = (int(min(values)), int(max(values))) if n and ok else (0, 0)
        if not ok or low < lo or high > hi:
            raise ValueError(f"metadata key '{key}': {etype.name} array holds values out of range")
        if isinstance(values, np.ndarray):
            return head + values.astype(_NUMPY_DTYPE[etype]).tobytes()
        return head + np.asarray(values, dtype=_NUMPY_DTYPE[etype]).tobytes()
    return head + np.asarray(values, dtype=_NUMPY_DTYPE[etype]).tobytes()


class _GGUFWriter(gguf.GGUFWriter):
    # gguf-py infers nested array types, refuses empty arrays and packs large arrays an
    # element at a time; we pack arrays ourselves (exact types, bulk). Scalars go through
    # gguf-py unchanged. `sub_type` carries our ArrayType through GGUFValue untouched.
    def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
        if vtype == _V.ARRAY:
            body = _pack_array(val, sub_type, "?")
            return (_U32.pack(_V.ARRAY) if add_vtype else b"") + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    def write_tensors_to_file(self, planned=(), *, progress: bool = False) -> None:
        # gguf-py's version writes tensors it holds; ours makes each one in turn and lets it go.
        self.write_ti_data_to_file()
        fout = self.fout[0]
        self.write_padding(fout, fout.tell())
        for name, data, gtype, shape in planned:
            lazy = data if isinstance(data, LazyTensor) else None
            raw = _tensor_data(name, lazy.load() if lazy else data, gtype, shape)
            raw.tofile(fout)
            self.write_padding(fout, raw.nbytes)
            del raw
            if lazy is not None and lazy.written is not None:
                lazy.written()
        self.state = gguf.gguf_writer.WriterState.WEIGHTS


def _tensor_data(name: str, data: Any, gtype: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor's bytes as a flat contiguous array, converting or quantizing floats."""
    nbytes = tensor_nbytes(gtype, shape)
    data = np.asarray(data)
    if data.dtype == np.uint8:  # raw bytes in the target format
        if data.size != nbytes:
            raise ValueError(
                f"tensor '{name}': {data.size} raw bytes given, {gtype.name}{list(shape)} needs {nbytes}"
            )
        return np.ascontiguousarray(data).reshape(-1)
    if data.size != math.prod(shape):
        raise ValueError(f"tensor '{name}': {data.size} elements given for shape {list(shape)}")
    dtype = _PLAIN_TENSOR_DTYPE.get(gtype)
    if dtype is not None:
        out = data.astype(dtype)
        if dtype.kind == "i" and not np.array_equal(out, data):
            raise ValueError(f"tensor '{name}': values out of range for {gtype.name}")
    else:
        try:
            qtype = gguf.GGMLQuantizationType(int(gtype))
            out = gguf.quants.quantize(data.astype(np.float32).reshape(shape), qtype)
        except (NotImplementedError, ValueError, gguf.quants.QuantError) as e:
            raise ValueError(
                f"tensor '{name}': cannot quantize to {gtype.name} here ({e}); pass raw uint8 bytes"
            ) from None
    out = np.ascontiguousarray(out).reshape(-1).view(np.uint8)
    assert out.size == nbytes
    return out


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tensors: Sequence[tuple[str, Any, int, Sequence[int]]],
    value_types: Mapping[str, int] | None = None,
    *,
    array_types: Mapping[str, ArrayType] | None = None,
) -> None:
    """Write a GGUF v3 file atomically (temp file, fsync, rename).

    `tensors` are (name, data, GGMLType, PyTorch-order shape); data is raw uint8 bytes in
    that type, an array of numbers to convert, or a LazyTensor giving either when its turn
    comes. `value_types` / `array_types` (as in GGUFFile) pin metadata types; missing ones
    are inferred from the Python values.
    """
    path = os.fspath(path)
    value_types = value_types or {}
    array_types = array_types or {}

    kvs: list[tuple[str, Any, GGUFValueType, ArrayType | None]] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key {key!r} must be a non-empty string")
        if key in value_types:
            vtype = _V(int(value_types[key]))
            atype = array_types.get(key) if vtype == _V.ARRAY else None
            if vtype == _V.ARRAY and atype is None:
                atype = _infer_elements(value, key)
        else:
            vtype, atype = _infer(value, key)
        if vtype == _V.ARRAY:
            _pack_array(value, atype, key)  # validate now, with the key in the message
        else:
            value = _check_scalar(value, vtype, key)
        kvs.append((key, value, vtype, atype))

    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1)
            or alignment > MAX_ALIGNMENT):
        raise ValueError(f"general.alignment {alignment!r} must be a power of two up to {MAX_ALIGNMENT}")

    # Names, types and shapes are checked before the file exists; data is checked as it is written.
    planned: list[tuple[str, Any, GGMLType, tuple[int, ...]]] = []
    seen: set[str] = set()
    for name, data, gtype, shape in tensors:
        if not isinstance(name, str) or not name or len(name.encode()) >= GGML_MAX_NAME:
            raise ValueError(f"tensor name {name!r} must be 1 to {GGML_MAX_NAME - 1} bytes")
        if name in seen:
            raise ValueError(f"duplicate tensor name '{name}'")
        seen.add(name)
        try:
            gtype = GGMLType(int(gtype))
        except ValueError:
            raise ValueError(f"tensor '{name}': unknown tensor type {gtype!r}") from None
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= GGML_MAX_DIMS or any(d <= 0 for d in shape):
            raise ValueError(f"tensor '{name}': bad shape {list(shape)}")
        try:
            tensor_nbytes(gtype, shape)  # rows that are not whole blocks fail here, before any work
        except ValueError as e:
            raise ValueError(f"tensor '{name}': {e}") from None
        planned.append((name, data, gtype, shape))

    # A fresh name in the target directory, so the final rename is atomic.
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    writer = None
    try:
        writer = _GGUFWriter(tmp, str(metadata.get("general.architecture", "")))
        writer.kv_data = [{}]  # drop the architecture key it adds, to keep the caller's order
        writer.data_alignment = alignment
        for key, value, vtype, atype in kvs:
            writer.add_key_value(key, value, vtype, sub_type=atype)
        for name, _, gtype, shape in planned:
            # A plain int type lets gguf-py write types its enum lacks (MXFP4).
            writer.add_tensor_info(name, shape, np.dtype(np.int8), tensor_nbytes(gtype, shape),
                                   raw_dtype=int(gtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(planned)
        writer.flush()
        os.fsync(writer.fout[0].fileno())
        writer.close()
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if writer is not None:
            writer.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
