"""Safetensors reading: validated headers, zero-copy numpy views over a memory map, sharded folders.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range within the data that follows, then the data. Every range is checked
against the file size before any view is made, so a truncated or hostile file is an error,
never a crash or a read past the end.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollama.fs.shards import ShardedTensors, read_index, release_pages, unmap

__all__ = ["STensor", "SafetensorsError", "SafetensorsFile", "SafetensorsFolder", "open_folder"]

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
INDEX_NAME = "model.safetensors.index.json"

# dtypes we can hand to the converter; BF16 has no numpy type and is read as raw uint16. U8
# holds packed quantized data (gpt-oss's MXFP4 blocks and scales), which a converter repacks.
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "U8": np.dtype("u1")}
# dtypes a valid file may hold that we refuse, with their element size (to validate ranges).
_OTHER_DTYPES = {
    "F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}


class SafetensorsError(ValueError):
    """A safetensors file or folder is malformed, or holds something we cannot read."""


@dataclass(frozen=True)
class STensor:
    """One tensor of a safetensors file: its dtype name, PyTorch-order shape and data view."""

    name: str
    dtype: str  # "F32", "F16", "BF16" or "U8"
    shape: tuple[int, ...]
    raw: np.ndarray  # zero-copy view: float32/float16, or uint16 bit patterns for BF16
    path: str

    def numpy(self) -> np.ndarray:
        """The values shaped like the tensor: float (zero-copy except for BF16), or uint8 for U8."""
        if self.dtype == "BF16":  # bfloat16 is the top half of a float32
            return (self.raw.astype(np.uint32) << 16).view(np.float32).reshape(self.shape)
        return self.raw.reshape(self.shape)


class SafetensorsFile:
    """One .safetensors file, memory-mapped; tensors by name as zero-copy views."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._mmap: mmap.mmap | None = None
        size = os.path.getsize(self.path)
        if size < 8:
            raise SafetensorsError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or n > size - 8:
                raise SafetensorsError(f"{self.path}: header length {n} does not fit the file of {size} bytes")
            head = f.read(n)
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata: dict[str, str] = {}
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        try:
            self._parse(head, data_start=8 + n, data_size=size - 8 - n)
        except RecursionError:  # a header nested deeper than Python's stack (e.g. in a repr)
            self.close()
            raise SafetensorsError(f"{self.path}: header is not valid JSON (nested too deeply)") from None
        except BaseException:
            self.close()
            raise

    def _parse(self, head: bytes, data_start: int, data_size: int) -> None:
        def no_duplicates(pairs):
            seen = {}
            for k, v in pairs:
                if k in seen:
                    raise SafetensorsError(f"{self.path}: duplicate tensor name {k!r} in the header")
                seen[k] = v
            return seen

        try:
            header = json.loads(head.decode("utf-8"), object_pairs_hook=no_duplicates)
        except RecursionError:
            raise SafetensorsError(f"{self.path}: header is not valid JSON (nested too deeply)") from None
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, or an integer too long to convert
            raise SafetensorsError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise SafetensorsError(f"{self.path}: __metadata__ is not an object")
        self.metadata = {str(k): str(v) for k, v in meta.items()}
        spans = []
        for name, info in header.items():
            where = f"{self.path}: tensor {_short(name)}"
            if not isinstance(info, dict):
                raise SafetensorsError(f"{where}: entry is not an object")
            dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if dtype in _DTYPES:
                itemsize = _DTYPES[dtype].itemsize
            elif dtype in _OTHER_DTYPES:
                itemsize = _OTHER_DTYPES[dtype]
            else:
                raise SafetensorsError(f"{where}: unknown dtype {_short(dtype)}")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise SafetensorsError(f"{where}: bad shape {_short(shape)}")
            if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1] <= data_size):
                raise SafetensorsError(f"{where}: data_offsets {_short(offsets)} lie outside the {data_size} data bytes")
            begin, end = offsets
            if dtype in ("F4", "F6_E2M3", "F6_E3M2"):  # sub-byte types: sizes not checkable this simply
                pass
            elif end - begin != math.prod(shape) * itemsize:
                raise SafetensorsError(f"{where}: {end - begin} bytes for {dtype}{shape}")
            spans.append((begin, end, name))
            self._entries[name] = (dtype, tuple(shape), data_start + begin, data_start + end)
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in itertools.pairwise(spans):
            if b1 < e0:
                raise SafetensorsError(f"{self.path}: tensors {n0!r} and {n1!r} overlap")

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return sorted(self._entries, key=lambda k: self._entries[k][2])

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> str:
        """The dtype name of a tensor, as the header gives it."""
        return self._entries[name][0]

    def __getitem__(self, name: str) -> STensor:
        dtype, shape, begin, end = self._entries[name]
        if dtype not in _DTYPES:
            raise SafetensorsError(
                f"{self.path}: tensor {name!r} has dtype {dtype}; only F32, F16, BF16 and U8 are supported"
            )
        if self._mmap is None:
            raise SafetensorsError(f"{self.path}: file is closed")
        count = (end - begin) // _DTYPES[dtype].itemsize
        raw = np.frombuffer(self._mmap, dtype=_DTYPES[dtype], count=count, offset=begin)
        return STensor(name, dtype, shape, raw, self.path)

    def release(self, name: str) -> None:
        """Drop tensor `name`'s pages from this process's memory (they stay in the page cache).

        A converter calls this once a tensor is written, so reading a whole checkpoint through
        the map never holds more than the tensors in hand. Views stay valid: a later read
        maps the pages again.
        """
        _, _, begin, end = self._entries[name]
        release_pages(self._mmap, begin, end)

    def close(self) -> None:
        """Unmap the file (views still in use keep it mapped until they go)."""
        unmap(self._mmap)
        self._mmap = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(value: object) -> str:
    """A header value for an error message: its repr, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class SafetensorsFolder(ShardedTensors[SafetensorsFile, STensor]):
    """The tensors of a checkpoint folder: one file, several shards, or shards listed by index.json."""

    error = SafetensorsError
    _open = SafetensorsFile

    @staticmethod
    def _names(shard: SafetensorsFile) -> list[str]:
        return shard.keys()

    def __getitem__(self, name: str) -> STensor:
        return self._where[name][name]

    def dtype(self, name: str) -> str:
        """The dtype name of a tensor, without reading it."""
        return self._where[name].dtype(name)


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The .safetensors files that hold a folder's weights (the index's list when there is one)."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        return read_index(index, SafetensorsError, "safetensors")[1]
    files = sorted(folder.glob("*.safetensors"))
    # Mistral's repositories carry its own consolidated layout beside the HF shards: not both.
    hf = [f for f in files if not f.name.startswith("consolidated")]
    return hf or files


def open_folder(folder: str | os.PathLike[str]) -> SafetensorsFolder:
    """Open every weight file of a checkpoint folder; SafetensorsError if there is none."""
    index = Path(folder) / INDEX_NAME
    if index.is_file():
        return SafetensorsFolder.open([], index, "safetensors")
    paths = weight_files(folder)
    if not paths:
        raise SafetensorsError(f"{folder}: no .safetensors weights in the folder")
    return SafetensorsFolder.open(paths)
