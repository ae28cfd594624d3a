"""The GGUF format's pieces below the reader (gguf.py): its value types and limits, the
struct formats of its scalars, and _Parser, the bounds-checked cursor over a mapped header.
"""

from __future__ import annotations

import enum
import mmap
import struct
from typing import Any, Union

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# ggml stores names in char[64] including the terminating NUL; llama.cpp refuses longer ones.
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
# The GGUF spec caps keys at 2**16 - 1 bytes.
MAX_KEY_LENGTH = 65535
# ggml counts elements in int64 and bytes in size_t; stay well inside both.
MAX_ELEMENTS = 1 << 62
MAX_ALIGNMENT = 1 << 16


class GGUFError(ValueError):
    """A GGUF file is malformed, unsupported, or exceeds a limit."""


class GGUFValueType(enum.IntEnum):
    """Type tag of a GGUF metadata value (same numbers as `gguf.GGUFValueType`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Element type of an array, enough to write it back unchanged: a GGUFValueType for an
# array of scalars/strings; for an array of arrays, a list holding each inner array's
# element type (so the list's length is the outer array's length).
ArrayType = Union[GGUFValueType, list]

_V = GGUFValueType
_SCALAR_FORMAT: dict[int, struct.Struct] = {
    _V.UINT8: struct.Struct("<B"),
    _V.INT8: struct.Struct("<b"),
    _V.UINT16: struct.Struct("<H"),
    _V.INT16: struct.Struct("<h"),
    _V.UINT32: struct.Struct("<I"),
    _V.INT32: struct.Struct("<i"),
    _V.FLOAT32: struct.Struct("<f"),
    _V.BOOL: struct.Struct("<B"),
    _V.UINT64: struct.Struct("<Q"),
    _V.INT64: struct.Struct("<q"),
    _V.FLOAT64: struct.Struct("<d"),
}
_NUMPY_DTYPE: dict[int, np.dtype] = {
    _V.UINT8: np.dtype("<u1"),
    _V.INT8: np.dtype("<i1"),
    _V.UINT16: np.dtype("<u2"),
    _V.INT16: np.dtype("<i2"),
    _V.UINT32: np.dtype("<u4"),
    _V.INT32: np.dtype("<i4"),
    _V.FLOAT32: np.dtype("<f4"),
    _V.BOOL: np.dtype("<u1"),
    _V.UINT64: np.dtype("<u8"),
    _V.INT64: np.dtype("<i8"),
    _V.FLOAT64: np.dtype("<f8"),
}
# Smallest encoding of one array element, to bound a claimed array length by the bytes left.
_MIN_ELEMENT_SIZE = {t: s.size for t, s in _SCALAR_FORMAT.items()}
_MIN_ELEMENT_SIZE[_V.STRING] = 8  # length prefix of an empty string
_MIN_ELEMENT_SIZE[_V.ARRAY] = 12  # element type + length of an empty array

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")
# Smallest possible key/value pair (8-byte length, 1-byte key, type, uint8) and tensor
# info (8-byte length, 1-byte name, n_dims, one dim, type, offset).
_MIN_KV_SIZE = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_SIZE = 8 + 1 + 4 + 8 + 4 + 8

_LEGACY_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt", b"algg": "ggla"}


def _quote(name: str) -> str:
    """A key or tensor name for an error message: quoted, one line, bounded."""
    if len(name) > 100:
        name = name[:80] + "..."
    return f"'{name}'" if name.isprintable() else repr(name)


def _decode(raw: bytes) -> str:
    # Ollama passes token bytes through untouched, and a few vocabularies hold
    # bytes that are not valid UTF-8: keep them (surrogateescape) instead of failing,
    # so `s.encode("utf-8", "surrogateescape")` gives the original bytes back.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


class _Parser:
    """Cursor over the mapped header; every read is bounds-checked first."""

    def __init__(self, buf: mmap.mmap, size: int, label: str, limits: dict[str, int]):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.label = label
        self.max_string = limits["max_string"]
        self.max_array = limits["max_array"]
        self.max_depth = limits["max_depth"]
        # One element budget for all arrays together: nested arrays could otherwise build
        # max_array lists of max_array elements each.
        self.elements_left = limits["max_array"]

    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.label}: {msg}")

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise self.fail(
                f"file is truncated: {what} needs {n} bytes at byte {self.pos}, "
                f"the file has {self.size} bytes"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str, limit: int) -> bytes:
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"{what} has length {n}, over the limit of {limit} bytes")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw

    def name(self, what: str, limit: int, kind: str, seen) -> tuple[str, str]:
        """A metadata key or tensor name, as (text, quoted text for messages): non-empty UTF-8
        and not in `seen`. Names are looked up and handed to ggml as text; no model has one
        that is not UTF-8, so such a name is refused rather than carried as surrogates."""
        raw = self.raw_string(what, limit)
        if not raw:
            raise self.fail(f"{what} is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8: {raw[:64]!r}") from None
        quoted = _quote(text)
        if text in seen:
            raise self.fail(f"duplicate {kind} {quoted}")
        return text, quoted

    def string(self, what: str) -> str:
        return _decode(self.raw_string(what, self.max_string))

    def value(self, vtype: int, what: str, depth: int) -> tuple[Any, ArrayType | None]:
        """Read one value of type `vtype`; returns (value, element type if an array)."""
        fmt = _SCALAR_FORMAT.get(vtype)
        if fmt is not None:
            self.need(fmt.size, what)
            (v,) = fmt.unpack_from(self.buf, self.pos)
            self.pos += fmt.size
            if vtype == _V.BOOL:
                if v > 1:
                    raise self.fail(f"{what} is a bool with invalid value {v}")
                v = bool(v)
            return v, None
        if vtype == _V.STRING:
            return self.string(what), None
        if vtype == _V.ARRAY:
            return self.array(what, depth + 1)
        raise self.fail(f"unknown value type {vtype} for {what}")

    def array(self, what: str, depth: int) -> tuple[list, ArrayType]:
        if depth > self.max_depth:
            raise self.fail(f"{what} nests arrays deeper than {self.max_depth} levels")
        etype = self.u32(f"element type of {what}")
        n = self.u64(f"length of {what}")
        if etype not in _MIN_ELEMENT_SIZE:
            raise self.fail(f"unknown array element type {etype} for {what}")
        etype = _V(etype)
        if n > self.max_array:
            raise self.fail(f"{what} has {n} elements, over the limit of {self.max_array}")
        self.elements_left -= n
        if self.elements_left < 0:
            raise self.fail(
                f"metadata arrays hold over {self.max_array} elements in all (at {what})"
            )
        # Check the claimed length against the bytes left before building anything.
        least = n * _MIN_ELEMENT_SIZE[etype]
        if self.pos + least > self.size:
            raise self.fail(
                f"{what} claims {n} elements of type {etype.name} ({least} bytes at least) "
                f"but only {self.size - self.pos} bytes are left in the file"
            )
        dtype = _NUMPY_DTYPE.get(etype)
        if dtype is not None:
            arr = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
            self.pos += least
            if etype == _V.BOOL:
                if n and int(arr.max()) > 1:
                    raise self.fail(f"{what} holds a bool with invalid value {int(arr.max())}")
                return arr.astype(bool).tolist(), etype
            return arr.tolist(), etype
        if etype == _V.STRING:
            return self.string_array(n, what), etype
        # Array of arrays: each element carries its own element type.
        values, types = [], []
        for i in range(n):
            v, t = self.array(f"{what}[{i}]", depth + 1)
            values.append(v)
            types.append(t)
        return values, types

    def string_array(self, n: int, what: str) -> list[str]:
        # The hot loop for vocabularies (up to ~262k tokens): locals only, one bounds check.
        buf, size, pos, limit = self.buf, self.size, self.pos, self.max_string
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (ln,) = unpack(buf, pos)
            pos += 8
            end = pos + ln
            if end > size or ln > limit:
                self.pos = pos
                if ln > limit:
                    raise self.fail(f"{what}[{i}] has length {ln}, over the limit of {limit} bytes")
                self.need(ln, f"{what}[{i}]")
            raw = buf[pos:end]
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                append(raw.decode("utf-8", "surrogateescape"))
            pos = end
        self.pos = pos
        return out
