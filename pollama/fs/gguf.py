"""Validated, memory-mapped GGUF reader (v2 and v3, little-endian).

Everything in the header is checked against the file size and sane limits before
anything proportional to a size field is allocated, so a hostile or damaged file
yields one GGUFError with a one-line message, never a crash, a hang or a huge
allocation. Tensor data is never read here: `tensor_bytes` hands out zero-copy views.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pollama.fs.ggml_types import GGMLType, block_size, type_size
from pollama.fs import mxfp4
from pollama.fs.gguf_format import (
    DEFAULT_ALIGNMENT,
    GGML_MAX_DIMS,
    GGML_MAX_NAME,
    GGUF_MAGIC,
    MAX_ALIGNMENT,
    MAX_ELEMENTS,
    MAX_KEY_LENGTH,
    _HEADER,
    _LEGACY_MAGICS,
    _MIN_ELEMENT_SIZE,
    _MIN_KV_SIZE,
    _MIN_TENSOR_INFO_SIZE,
    _V,
    ArrayType,
    GGUFError,
    GGUFValueType,
    _Parser,
    _quote,
)

__all__ = [
    "GGUFError",
    "GGUFValueType",
    "TensorInfo",
    "GGUFFile",
    "read_metadata",
    "DEFAULT_ALIGNMENT",
]

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
            key, qkey = p.name(f"key #{i}", MAX_KEY_LENGTH, "metadata key", metadata)
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
            name, qname = p.name(f"name of tensor #{i}", GGML_MAX_NAME - 1, "tensor name", seen)
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
