"""PyTorch checkpoints (`torch.save` zip files: pytorch_model.bin, consolidated.pth) read
without PyTorch and without running the pickle's code.

A checkpoint is a zip holding `<root>/data.pkl` (the object tree, pickled) and one file per
storage, `<root>/data/<key>`. The pickle names a few functions to rebuild tensors; a
restricted unpickler maps exactly those to plain records and refuses every other global, so
a hostile checkpoint cannot execute anything (pickle's usual danger).
"""

from __future__ import annotations

import math
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollama.fs.shards import ShardedTensors, release_pages, unmap


class CheckpointError(ValueError):
    """A PyTorch checkpoint that cannot be read safely."""


# torch storage class name -> (numpy dtype, name as in safetensors)
_STORAGES = {
    "FloatStorage": (np.dtype("<f4"), "F32"),
    "HalfStorage": (np.dtype("<f2"), "F16"),
    "BFloat16Storage": (np.dtype("<u2"), "BF16"),  # raw bits; numpy has no bfloat16
    "DoubleStorage": (np.dtype("<f8"), "F64"),
    "LongStorage": (np.dtype("<i8"), "I64"),
    "IntStorage": (np.dtype("<i4"), "I32"),
    "ShortStorage": (np.dtype("<i2"), "I16"),
    "CharStorage": (np.dtype("i1"), "I8"),
    "ByteStorage": (np.dtype("u1"), "U8"),
    "BoolStorage": (np.dtype("?"), "BOOL"),
}


@dataclass(frozen=True)
class _Storage:
    kind: str
    key: str
    numel: int


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor of a checkpoint: where its storage is and how it is viewed."""

    name: str
    dtype: str  # F32, F16, BF16, ...
    shape: tuple[int, ...]
    storage_key: str
    offset: int  # in elements
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, *rest):
    return ("tensor", storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *rest):
    return data


class _Unpickler(pickle.Unpickler):
    """Knows only the globals torch.save writes for tensors and containers."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return name  # a storage type tag, resolved in persistent_load
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which a weights file never needs")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
        kind = pid[1] if isinstance(pid[1], str) else getattr(pid[1], "__name__", str(pid[1]))
        if kind not in _STORAGES:
            raise CheckpointError(f"unsupported storage type {kind!r}")
        return _Storage(kind, str(pid[2]), int(pid[4]))


def _walk(obj, prefix: str, out: dict) -> None:
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, shape, stride = obj
        out[prefix] = (storage, offset, shape, stride)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{prefix}.{key}" if prefix else str(key), out)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length


class TorchCheckpoint:
    """The tensors of a torch.save zip file, by name; data read on demand.

    torch.save stores each storage uncompressed, so a tensor is a zero-copy view into the
    memory-mapped file (as a safetensors tensor is); a storage a re-packer compressed is
    read out of the zip instead.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mmap: mmap.mmap | None = None
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{self.path}: not a PyTorch zip checkpoint ({e})") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        names = self.zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{self.path}: no data.pkl (legacy or unknown checkpoint format)")
        self.root = pkl[0].split("/")[0]
        try:
            tree = _Unpickler(self.zip.open(pkl[0])).load()
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        except Exception as e:  # a corrupt pickle raises anything
            raise CheckpointError(f"{self.path}: cannot read data.pkl ({type(e).__name__}: {e})") from None
        found: dict = {}
        _walk(tree, "", found)
        self.tensors: dict[str, CheckpointTensor] = {}
        for name, (storage, offset, shape, stride) in found.items():
            if not isinstance(storage, _Storage):
                raise CheckpointError(f"{self.path}: tensor {name!r} has no storage")
            if len(stride) != len(shape) or any(s < 0 for s in (*shape, *stride)) or offset < 0:
                raise CheckpointError(f"{self.path}: tensor {name!r} has a negative or mismatched size, stride or offset")
            end = offset + sum((d - 1) * s for d, s in zip(shape, stride)) + 1 if math.prod(shape) else offset
            if end > storage.numel:
                raise CheckpointError(f"{self.path}: tensor {name!r} reaches past its storage")
            dtype = _STORAGES[storage.kind][1]
            self.tensors[name] = CheckpointTensor(name, dtype, shape, storage.key, offset, stride)
        self._storages = {s.key: s for s, *_ in found.values()}
        # Where each storage's bytes start in the file (None: compressed, read through the zip).
        size = self.path.stat().st_size
        self._data_start: dict[str, int | None] = {}
        with open(self.path, "rb") as f:
            for key, storage in self._storages.items():
                try:
                    info = self.zip.getinfo(f"{self.root}/data/{key}")
                except KeyError:
                    raise CheckpointError(f"{self.path}: storage {key!r} is missing from the zip") from None
                if info.file_size < storage.numel * _STORAGES[storage.kind][0].itemsize:
                    raise CheckpointError(f"{self.path}: storage {key!r} is truncated")
                if info.compress_type != zipfile.ZIP_STORED:
                    self._data_start[key] = None
                    continue
                f.seek(info.header_offset)
                head = f.read(_LOCAL_HEADER.size)
                if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                    raise CheckpointError(f"{self.path}: storage {key!r} has a damaged zip entry")
                _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
                start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                if start + info.file_size > size:
                    raise CheckpointError(f"{self.path}: storage {key!r} is truncated")
                self._data_start[key] = start
            if size and any(v is not None for v in self._data_start.values()):
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _flat(self, key: str) -> np.ndarray:
        storage = self._storages[key]
        np_dtype = _STORAGES[storage.kind][0]
        start = self._data_start[key]
        if start is None:
            raw = self.zip.read(f"{self.root}/data/{key}")
            return np.frombuffer(raw, dtype=np_dtype, count=storage.numel)
        if self._mmap is None:
            raise CheckpointError(f"{self.path}: file is closed")
        return np.frombuffer(self._mmap, dtype=np_dtype, count=storage.numel, offset=start)

    def view(self, name: str) -> np.ndarray:
        """The tensor's values (BF16 as raw uint16 bits), read-only, zero-copy where the zip allows."""
        t = self.tensors[name]
        flat = self._flat(t.storage_key)
        if not t.shape:
            return flat[t.offset : t.offset + 1].reshape(())
        strides = tuple(s * flat.itemsize for s in t.stride)
        return np.lib.stride_tricks.as_strided(flat[t.offset :], shape=t.shape, strides=strides, writeable=False)

    def array(self, name: str) -> np.ndarray:
        """The tensor's values (BF16 as raw uint16 bits), copied out of the file."""
        return np.array(self.view(name))

    def release(self, name: str) -> None:
        """Drop the pages of tensor `name`'s storage from this process's memory (they stay cached)."""
        key = self.tensors[name].storage_key
        start = self._data_start.get(key)
        if start is None or self._mmap is None or not hasattr(self._mmap, "madvise"):
            return
        storage = self._storages[key]
        release_pages(self._mmap, start, start + storage.numel * _STORAGES[storage.kind][0].itemsize)

    def close(self) -> None:
        """Close the zip and unmap the file (views still in use keep it mapped until they go)."""
        self.zip.close()
        unmap(self._mmap)
        self._mmap = None

    def __enter__(self) -> TorchCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TorchTensor:
    """One tensor of a checkpoint folder, as a converter reads it (the shape of safetensors' STensor)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    checkpoint: TorchCheckpoint

    def numpy(self) -> np.ndarray:
        """The values as a float array shaped like the tensor (zero-copy except for BF16)."""
        values = self.checkpoint.view(self.name)
        if self.dtype == "BF16":  # bfloat16 is the top half of a float32
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values


class TorchFolder(ShardedTensors[TorchCheckpoint, TorchTensor]):
    """The tensors of one or several PyTorch checkpoint files (shards), by name."""

    error = CheckpointError
    _open = TorchCheckpoint

    @staticmethod
    def _names(shard: TorchCheckpoint) -> list[str]:
        return list(shard.tensors)

    def __getitem__(self, name: str) -> TorchTensor:
        ckpt = self._where[name]
        info = ckpt.tensors[name]
        return TorchTensor(name, info.dtype, info.shape, ckpt)

    def dtype(self, name: str) -> str:
        """The dtype name of a tensor, without reading it."""
        return self._where[name].tensors[name].dtype


def open_checkpoints(paths: list[Path], index: Path | None = None) -> TorchFolder:
    """Open checkpoint shards as one folder; with `index` (pytorch_model.bin.index.json), the
    shards it lists, checked against it."""
    return TorchFolder.open(paths, index)
