"""PyTorch checkpoints (`torch.save` zip files: pytorch_model.bin, consolidated.pth) read
without PyTorch and without running the pickle's code.

A checkpoint is a zip holding `<root>/data.pkl` (the object tree, pickled) and one file per
storage, `<root>/data/<key>`. The pickle names a few functions to rebuild tensors; a
restricted unpickler maps exactly those to plain records and refuses every other global, so
a hostile checkpoint cannot execute anything (pickle's usual danger).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


class TorchCheckpoint:
    """The tensors of a torch.save zip file, by name; data read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{self.path}: not a PyTorch zip checkpoint ({e})") from None
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
            if any(s < 0 for s in shape) or offset < 0:
                raise CheckpointError(f"{self.path}: tensor {name!r} has a negative size or offset")
            end = offset + sum((d - 1) * s for d, s in zip(shape, stride)) + 1 if math.prod(shape) else offset
            if end > storage.numel:
                raise CheckpointError(f"{self.path}: tensor {name!r} reaches past its storage")
            dtype = _STORAGES[storage.kind][1]
            self.tensors[name] = CheckpointTensor(name, dtype, shape, storage.key, offset, stride)
        self._storages = {s.key: s for s, *_ in found.values()}

    def array(self, name: str) -> np.ndarray:
        """The tensor's values (BF16 as raw uint16 bits), copied out of the zip."""
        t = self.tensors[name]
        storage = self._storages[t.storage_key]
        np_dtype = _STORAGES[storage.kind][0]
        raw = self.zip.read(f"{self.root}/data/{t.storage_key}")
        if len(raw) < storage.numel * np_dtype.itemsize:
            raise CheckpointError(f"{self.path}: storage of {name!r} is truncated")
        flat = np.frombuffer(raw, dtype=np_dtype, count=storage.numel)
        strides = tuple(s * np_dtype.itemsize for s in t.stride)
        view = np.lib.stride_tricks.as_strided(flat[t.offset :], shape=t.shape, strides=strides)
        return np.array(view)

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> TorchCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
