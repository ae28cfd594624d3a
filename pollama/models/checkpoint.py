"""A Hugging Face checkpoint folder as the converters read it: config.json, the weight files
(safetensors or PyTorch, found in Ollama's order), and experts stacked into one tensor per
layer; ConvertError (one line) for what cannot be converted.
"""

from __future__ import annotations

import collections.abc
import json
import re
from pathlib import Path

import numpy as np

from pollama.fs.safetensors import SafetensorsError, open_folder
from pollama.fs.torchzip import CheckpointError, open_checkpoints


class ConvertError(ValueError):
    """A folder that cannot be converted; the message names the file or tensor at fault."""


class StackedExperts(collections.abc.Mapping):
    """A checkpoint's tensors with each layer's per-expert matrices stacked as GGUF keeps them.

    `model.layers.N.mlp.experts.E.<proj>.weight` ([out, in], one per expert E, as Qwen3-MoE and
    Mixtral are published) become `model.layers.N.mlp.experts.<proj>.weight` [n_experts, out,
    in]; a fused `mlp.experts.gate_up_proj` [n_experts, 2 * ff, in] (transformers 5's own
    layout) becomes its gate and up halves, and `mlp.experts.down_proj` gets its `.weight`.
    A stacked tensor is read when written, and its parts' pages are dropped then.
    """

    _PER_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight")
    _FUSED = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)(\.weight)?")

    def __init__(self, weights, n_experts: int):
        self.weights = weights
        self.stacks: dict[str, list[str | None]] = {}  # stacked name -> its parts, by expert
        self.halves: dict[str, tuple[str, int]] = {}  # gate/up name -> (fused source, which half)
        self.renamed: dict[str, str] = {}  # down_proj.weight -> down_proj
        self.names: list[str] = []
        for name in weights:
            if m := self._PER_EXPERT.fullmatch(name):
                stacked = f"{m.group(1)}.{m.group(3)}.weight"
                expert = int(m.group(2))
                if expert >= n_experts:
                    raise ConvertError(f"tensor {name!r}: expert {expert} of {n_experts} (config.json num_experts)")
                if stacked not in self.stacks:
                    self.stacks[stacked] = [None] * n_experts
                    self.names.append(stacked)
                self.stacks[stacked][expert] = name
            elif m := self._FUSED.fullmatch(name):
                shape = tuple(weights[name].shape)
                if len(shape) != 3 or shape[0] != n_experts:
                    raise ConvertError(f"tensor {name!r} of shape {list(shape)} is not [{n_experts} experts, out, in]")
                if m.group(2) == "down_proj":
                    self.renamed[f"{m.group(1)}.down_proj.weight"] = name
                    self.names.append(f"{m.group(1)}.down_proj.weight")
                    continue
                if shape[1] % 2:
                    raise ConvertError(f"tensor {name!r}: {shape[1]} rows are not gate and up halves")
                for half, part in enumerate(("gate_proj", "up_proj")):
                    self.halves[f"{m.group(1)}.{part}.weight"] = (name, half)
                    self.names.append(f"{m.group(1)}.{part}.weight")
            else:
                self.names.append(name)
        for stacked, parts in self.stacks.items():
            if None in parts:
                raise ConvertError(f"{stacked}: the checkpoint lacks expert {parts.index(None)}")
        self.unwritten = {source: 2 for source, _ in self.halves.values()}

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str):
        if name in self.stacks:
            return _Stack([self.weights[part] for part in self.stacks[name]])
        if name in self.halves:
            source, half = self.halves[name]
            return _Half(self.weights[source], half)
        return self.weights[self.renamed.get(name, name)]

    def _sources(self, name: str) -> list[str]:
        if name in self.stacks:
            return self.stacks[name]
        if name in self.halves:
            return [self.halves[name][0]]
        return [self.renamed.get(name, name)]

    def dtype(self, name: str) -> str:
        dtypes = {self.weights.dtype(source) for source in self._sources(name)}
        if len(dtypes) > 1:
            raise ConvertError(f"{name}: experts of different dtypes {sorted(dtypes)}")
        return dtypes.pop()

    def release(self, name: str) -> None:
        if name in self.halves:
            source = self.halves[name][0]
            self.unwritten[source] -= 1
            if self.unwritten[source]:
                return
        for source in self._sources(name):
            self.weights.release(source)


class _Stack:
    def __init__(self, parts):
        self.parts = parts
        self.shape = (len(parts), *parts[0].shape)
        for part in parts:
            if tuple(part.shape) != tuple(parts[0].shape):
                raise ConvertError(f"experts of different shapes: {list(part.shape)} and {list(parts[0].shape)}")

    def numpy(self) -> np.ndarray:
        return np.stack([np.asarray(part.numpy(), dtype=np.float32) for part in self.parts])


class _Half:
    def __init__(self, tensor, half: int):
        self.tensor = tensor
        self.half = half
        n, rows, cols = tensor.shape
        self.shape = (n, rows // 2, cols)

    def numpy(self) -> np.ndarray:
        rows = self.shape[1]
        return np.ascontiguousarray(self.tensor.numpy()[:, self.half * rows:(self.half + 1) * rows])


def find_weights(folder: str | Path) -> tuple[str, list[Path]]:
    """("safetensors" | "torch" | "gguf", files) holding a folder's model, ("", []) when none.

    Ollama's order: safetensors, then pytorch_model*.bin (its -N-of-M shards before a single
    file, as Ollama's converter reads them), then consolidated*.pth, then *.gguf, then a GGUF
    named *.bin. Ollama takes only model*.safetensors (else consolidated*); we take every
    .safetensors file, HF shards before Mistral's consolidated ones (see weight_files).
    Checkpoints are taken only when they are zip files, as Ollama checks their content type,
    so a git-lfs pointer is skipped.
    """
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return "safetensors", sorted(folder.glob("*.safetensors"))
    for pattern in ("pytorch_model*.bin", "consolidated*.pth"):
        found = sorted(folder.glob(pattern))
        if found and all(_magic(p) == b"PK\x03\x04" for p in found):
            shards = [p for p in found if re.fullmatch(r"pytorch_model-.+-of-.+\.bin", p.name)]
            return "torch", shards or found
    ggufs = sorted(folder.glob("*.gguf")) or [p for p in sorted(folder.glob("*.bin")) if _magic(p) == b"GGUF"]
    return ("gguf", ggufs) if ggufs else ("", [])


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


TORCH_INDEX_NAME = "pytorch_model.bin.index.json"


def open_weights(folder: str | Path):
    """The tensors of a checkpoint folder, by HF name (safetensors or PyTorch); ConvertError if none."""
    folder = Path(folder)
    kind, files = find_weights(folder)
    try:
        if kind == "safetensors":
            return open_folder(folder)
        if kind == "torch":
            index = folder / TORCH_INDEX_NAME
            return open_checkpoints(files, index if files[0].name.startswith("pytorch_model") and index.is_file() else None)
    except (SafetensorsError, CheckpointError) as e:
        raise ConvertError(str(e)) from None
    except OSError as e:
        raise ConvertError(f"{folder}: cannot read the weights ({e})") from None
    not_zips = [p.name for p in (*folder.glob("pytorch_model*.bin"), *folder.glob("consolidated*.pth"))]
    if not_zips:
        raise ConvertError(f"{folder / min(not_zips)}: not a PyTorch zip checkpoint (a git-lfs pointer?)")
    raise ConvertError(f"{folder}: no .safetensors weights (nor pytorch_model*.bin, consolidated*.pth) in the folder")


def read_hf_config(folder: str | Path) -> tuple[dict, str]:
    """(config.json as a dict, the model class its `architectures` names) of a HF folder;
    ConvertError (one line) for a folder that is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"{folder}: no config.json in the folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{config_path}: not valid JSON ({e})") from None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ConvertError(f"{config_path}: no 'architectures' list naming the model class")
    return config, archs[0]
