"""Validated, memory-mapped GGUF reader (v2 and v3, little-endian).

Everything in the header is checked against the file size and sane limits before
anything proportional to a size field is allocated, so a hostile or damaged file
yields one GGUFError with a one-line message, never a crash, a hang or a huge
allocation. Tensor data is never read here: `tensor_bytes` hands out zero-copy views.
"""

from __future__ import annotations

import enum
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from pollama.fs.ggml_types import GGMLType, block_size, type_size
from pollama.fs import mxfp4

__all__ = [
    "GGUFError",
    "GGUFValueType",
    "TensorInfo",
    "GGUFFile",
    "read_metadata",
    "DEFAULT_ALIGNMENT",
]

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


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry; `shape` is PyTorch order, `offset` is absolute in the file."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int
    # MXFP4 stored as Ollama's gpt-oss files store it (tensor type 4, codes in OpenAI's paired
    # order, pollama/fs/mxfp4.py): tensor_data() gives it in GGML's layout.
    paired_codes: bool = False

    @property
    def ne(self) -> tuple[int, ...]:
        """Dimensions in ggml order (ne0 innermost)."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


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


class GGUFFile:
    """A GGUF file, memory-mapped read-only and fully validated on open."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_tensors: int = 1 << 20,
        max_kv: int = 1 << 20,
        max_string: int = 1 << 26,
        max_array: int = 1 << 24,  # elements in one array, and in all arrays together
        max_depth: int = 8,
    ):
        self.path = os.fspath(path)
        self._label = self.path
        self._mm: mmap.mmap | None = None
        self._address = 0
        self.version = 0
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, GGUFValueType] = {}
        self.array_types: dict[str, ArrayType] = {}
        self.tensors: dict[str, TensorInfo] = {}
        limits = dict(max_string=max_string, max_array=max_array, max_depth=max_depth)
        try:
            # Checked before open(): opening a FIFO for reading would block forever.
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise GGUFError(f"{self._label}: cannot open: not a regular file")
            with open(self.path, "rb") as fh:
                self.size = os.fstat(fh.fileno()).st_size
                if self.size < _HEADER.size:
                    raise GGUFError(
                        f"{self._label}: file is too small to be GGUF ({self.size} bytes)"
                    )
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self._label}: cannot open: {e.strerror or e}") from None
        try:
            self.size = len(self._mm)  # what we may touch, whatever the file does later
            self._parse(_Parser(self._mm, self.size, self._label, limits), max_tensors, max_kv)
            # Base address for ctypes users; a read-only mmap can't give it via c_char.from_buffer.
            self._address = np.frombuffer(self._mm, dtype=np.uint8, count=1).ctypes.data
        except BaseException:
            self.close()
            raise

    # -- parsing -----------------------------------------------------------------

    def _parse(self, p: _Parser, max_tensors: int, max_kv: int) -> None:
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(p.buf, 0)
        if magic != GGUF_MAGIC:
            if magic == b"FUGG":
                raise p.fail("big-endian GGUF files are not supported")
            if magic in _LEGACY_MAGICS:
                raise p.fail(
                    f"legacy {_LEGACY_MAGICS[magic]} model format is not supported, "
                    "convert it to GGUF"
                )
            raise p.fail(f"not a GGUF file (bad magic {magic!r})")
        if version not in (1, 2, 3):
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in (1, 2, 3):
                raise p.fail("big-endian GGUF files are not supported")
            raise p.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        if version == 1:
            raise p.fail("GGUF version 1 is not supported (supported: 2, 3); re-convert the model")
        self.version = version
        p.pos = _HEADER.size

        left = self.size - p.pos
        if n_tensors > max_tensors:
            raise p.fail(f"header claims {n_tensors} tensors, over the limit of {max_tensors}")
        if n_kv > max_kv:
            raise p.fail(f"header claims {n_kv} metadata keys, over the limit of {max_kv}")
        if n_tensors * _MIN_TENSOR_INFO_SIZE + n_kv * _MIN_KV_SIZE > left:
            raise p.fail(
                f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                f"which cannot fit in the file ({self.size} bytes)"
            )

        self._parse_metadata(p, n_kv)
        self._parse_alignment(p)
        infos = self._parse_tensor_infos(p, n_tensors)
        self.data_offset = -(-p.pos // self.alignment) * self.alignment
        self._place_tensors(p, infos)

    def _parse_metadata(self, p: _Parser, n_kv: int) -> None:
        metadata, value_types, array_types = self.metadata, self.value_types, self.array_types
        for i in range(n_kv):
            raw = p.raw_string(f"key #{i}", MAX_KEY_LENGTH)
            if not raw:
                raise p.fail(f"key #{i} is empty")
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise p.fail(f"key #{i} is not valid UTF-8: {raw[:64]!r}") from None
            qkey = _quote(key)
            if key in metadata:
                raise p.fail(f"duplicate metadata key {qkey}")
            vtype = p.u32(f"type of key {qkey}")
            if vtype not in _MIN_ELEMENT_SIZE:
                raise p.fail(f"unknown value type {vtype} for key {qkey}")
            value, atype = p.value(vtype, f"key {qkey}", 0)
            metadata[key] = value
            value_types[key] = _V(vtype)
            if atype is not None:
                array_types[key] = atype

    def _parse_alignment(self, p: _Parser) -> None:
        if "general.alignment" not in self.metadata:
            return
        a = self.metadata["general.alignment"]
        t = self.value_types["general.alignment"]
        if t not in (_V.UINT8, _V.UINT16, _V.UINT32, _V.UINT64, _V.INT8, _V.INT16, _V.INT32, _V.INT64):
            raise p.fail(f"general.alignment must be an integer, not {t.name}")
        if a <= 0 or a & (a - 1) or a > MAX_ALIGNMENT:
            raise p.fail(
                f"general.alignment {a} is invalid (must be a power of two up to {MAX_ALIGNMENT})"
            )
        self.alignment = a

    def _parse_tensor_infos(self, p: _Parser, n_tensors: int) -> list[tuple]:
        infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            raw = p.raw_string(f"name of tensor #{i}", GGML_MAX_NAME - 1)
            if not raw:
                raise p.fail(f"tensor #{i} has an empty name")
            try:
                # Names are looked up and handed to ggml as text; no model has a name
                # that is not UTF-8 (as keys, refused rather than carried as surrogates).
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise p.fail(f"the name of tensor #{i} is not valid UTF-8: {raw!r}") from None
            qname = _quote(name)
            if name in seen:
                raise p.fail(f"duplicate tensor name {qname}")
            seen.add(name)
            n_dims = p.u32(f"n_dims of tensor {qname}")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise p.fail(f"tensor {qname} has {n_dims} dimensions (must be 1 to {GGML_MAX_DIMS})")
            p.need(8 * n_dims + 12, f"dimensions, type and offset of tensor {qname}")
            ne = struct.unpack_from(f"<{n_dims}Q", p.buf, p.pos)
            p.pos += 8 * n_dims
            gtype = p.u32(f"type of tensor {qname}")
            offset = p.u64(f"offset of tensor {qname}")

            n_elements = 1
            for d in ne:
                if d == 0:
                    raise p.fail(f"tensor {qname} has a zero dimension {list(ne)}")
                n_elements *= d
                if n_elements > MAX_ELEMENTS:
                    raise p.fail(f"tensor {qname} dimensions {list(ne)} are too large")
            paired = gtype == mxfp4.OLLAMA_MXFP4
            try:
                gtype = GGMLType.MXFP4 if paired else GGMLType(gtype)
                bs, ts = block_size(gtype), type_size(gtype)
            except ValueError:
                raise p.fail(f"unknown tensor type {gtype} for tensor {qname}") from None
            if ne[0] % bs:
                raise p.fail(
                    f"tensor {qname} row size {ne[0]} is not a multiple of "
                    f"the {gtype.name} block size {bs}"
                )
            nbytes = n_elements // bs * ts
            if offset % self.alignment:
                raise p.fail(
                    f"tensor {qname} data offset {offset} is not a multiple of "
                    f"the alignment {self.alignment}"
                )
            infos.append((name, tuple(reversed(ne)), gtype, offset, nbytes, paired))
        return infos

    def _place_tensors(self, p: _Parser, infos: list[tuple]) -> None:
        base = self.data_offset
        for name, shape, gtype, rel, nbytes, paired in infos:
            start = base + rel
            end = start + nbytes
            if end > self.size:
                raise p.fail(
                    f"tensor {_quote(name)} data ends at byte {end} past the end of the file "
                    f"({self.size} bytes)"
                )
            self.tensors[name] = TensorInfo(name, shape, gtype, start, nbytes, paired)
        # Overlap check in offset order; files may list tensors in any order.
        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:]):
            if a.offset + a.nbytes > b.offset:
                raise p.fail(
                    f"tensors {_quote(a.name)} and {_quote(b.name)} overlap "
                    f"(bytes {a.offset}..{a.offset + a.nbytes} and {b.offset}..{b.offset + b.nbytes})"
                )

    # -- access ------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value for `key`, or `default`."""
        return self.metadata.get(key, default)

    def _mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise GGUFError(f"{self._label}: file is closed")
        return self._mm

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Zero-copy read-only uint8 view of tensor `name`'s data in the mapping."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self._label}: no tensor named {_quote(name)}")
        return np.frombuffer(self._mapping(), dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def tensor_data(self, name: str) -> np.ndarray:
        """Tensor `name`'s bytes in GGML's layout: the zero-copy view, or a repacked copy for
        MXFP4 in Ollama's order (see TensorInfo.paired_codes)."""
        raw = self.tensor_bytes(name)
        return mxfp4.from_ollama(raw) if self.tensors[name].paired_codes else raw

    def address(self) -> int:
        """Base address of the mapping; stable while the file is open."""
        self._mapping()
        return self._address

    def advise_dontneed(self, offset: int, length: int) -> None:
        """Tell the kernel the pages fully inside [offset, offset+length) are no longer needed."""
        mm = self._mapping()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} is outside the file ({self.size} bytes)")
        # Only whole pages inside the range: a neighbouring tensor may share the edge pages.
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        end = (offset + length) // page * page
        if end > start and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Unmap the file (deferred until outstanding `tensor_bytes` views are gone)."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # numpy views still point into the mapping; it is unmapped when the
                # last of them is collected, which is what keeps those views valid.
                pass

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, "
            f"{len(self.tensors)} tensors)"
        )


def read_metadata(path: str | os.PathLike[str], **limits: int) -> dict[str, Any]:
    """Metadata of the GGUF file at `path` (validated like GGUFFile)."""
    with GGUFFile(path, **limits) as f:
        return f.metadata
