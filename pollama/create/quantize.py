"""`create --quantize`: rewrite an F32/F16/BF16 GGUF with quantized weights, as Ollama does.

Which tensors are quantized, and to what, follows Ollama's engine-era server/quantization.go
(its port of llama.cpp's llama_tensor_get_type): 1-D tensors, norms and a few small or
sensitive weights keep their type; `output.weight` (and `token_embd.weight` when the
embeddings are tied) get Q6_K; Q4_K_M gives attn_v and ffn_down Q6_K on the "more bits"
layers, Q4_K_S gives them Q5_K on the first layers; rows whose length is not a whole number
of blocks fall back to a type that fits. The extra targets Ollama does not accept (Q4_0 ...
Q6_K) get llama.cpp's rules for them.

Ollama leaves a model alone when the requested type already is its file type; a caller
that wants the same should compare `parse_target(target)` with the source's file type.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pollama.fs.ggml_types import FileType, GGMLType, block_size, tensor_nbytes
from pollama.fs.gguf import GGUFFile, GGUFValueType, TensorInfo
from pollama.fs.writer import LazyTensor, write_gguf
from pollama.ml.ggml.quantize import convert_rows

__all__ = [
    "SUPPORTED_TARGETS",
    "QuantizeError",
    "QuantizeSummary",
    "parse_target",
    "plan_tensor_types",
    "quantize_gguf",
]

_log = logging.getLogger("pollama.create")

_T = GGMLType
_F = FileType


class QuantizeError(ValueError):
    """A quantization request that cannot be carried out (bad target, bad source)."""


# Ollama's names (ParseFileType, after upper-casing, with its Q4_K alias), then the
# llama.cpp types pollama offers beyond them (Q5_K is llama-quantize's alias of Q5_K_M).
_TARGETS: dict[str, FileType] = {
    "F32": _F.ALL_F32,
    "F16": _F.MOSTLY_F16,
    "BF16": _F.BF16,
    "Q8_0": _F.Q8_0,
    "Q4_K_S": _F.Q4_K_S,
    "Q4_K_M": _F.Q4_K_M,
    "Q4_K": _F.Q4_K_M,
    "Q4_0": _F.Q4_0,
    "Q4_1": _F.Q4_1,
    "Q5_0": _F.Q5_0,
    "Q5_1": _F.Q5_1,
    "Q5_K_S": _F.Q5_K_S,
    "Q5_K_M": _F.Q5_K_M,
    "Q5_K": _F.Q5_K_M,
    "Q6_K": _F.Q6_K,
}

SUPPORTED_TARGETS = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
)
"""Target names as listed in the unsupported-type message (aliases Q4_K and Q5_K left out)."""

# The tensor type a file type asks for by default (Ollama's FileType.ToTensorType).
_DEFAULT_TYPE: dict[FileType, GGMLType] = {
    _F.ALL_F32: _T.F32,
    _F.MOSTLY_F16: _T.F16,
    _F.BF16: _T.BF16,
    _F.Q8_0: _T.Q8_0,
    _F.Q4_0: _T.Q4_0,
    _F.Q4_1: _T.Q4_1,
    _F.Q5_0: _T.Q5_0,
    _F.Q5_1: _T.Q5_1,
    _F.Q4_K_S: _T.Q4_K,
    _F.Q4_K_M: _T.Q4_K,
    _F.Q5_K_S: _T.Q5_K,
    _F.Q5_K_M: _T.Q5_K,
    _F.Q6_K: _T.Q6_K,
}

_FLOAT_TYPES = frozenset({_T.F32, _T.F16, _T.BF16})
_FLOAT_FILE_TYPES = frozenset({_F.ALL_F32, _F.MOSTLY_F16, _F.BF16})

# File type names of the 1-3 bit IQ formats: without an importance matrix they are unusable.
_IMATRIX_TARGET = re.compile(r"IQ[123]_")


def parse_target(target: str) -> FileType:
    """The file type for a `--quantize` name (case-insensitive), or QuantizeError."""
    name = str(target).upper()
    if name in _TARGETS:
        return _TARGETS[name]
    if _IMATRIX_TARGET.match(name):
        raise QuantizeError(
            f"quantization type {name} needs an importance matrix, which is not supported - "
            f"supported types are {', '.join(SUPPORTED_TARGETS)}"
        )
    raise QuantizeError(
        f"unsupported quantization type {name} - supported types are {', '.join(SUPPORTED_TARGETS)}"
    )


# -- which tensors are quantized ----------------------------------------------------------

# Substrings of 2-D weights that stay as they are: norms, MoE routers, small convolution and
# time-mix kernels, relative position biases, and gemma3n's per-layer embeddings.
_KEEP_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_inp_shexp.weight",
    "ssm_conv1d.weight",
    "shortconv.conv.weight",
    "time_mix_first.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    "per_layer_token_embd.weight",
)
_KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})


def _should_quantize(name: str, shape: tuple[int, ...]) -> bool:
    # Vision ("v."), audio ("a.") and projector ("mm.") tensors keep their precision.
    return (
        name.endswith("weight")
        and not name.startswith(("v.", "a."))
        and "mm." not in name
        and len(shape) >= 2
        and name not in _KEEP_NAMES
        and not any(s in name for s in _KEEP_SUBSTRINGS)
    )


# Qwen3-Next / Qwen3.5 hybrid models get a fixed table for Q4_K_*.
_QWEN3_LINEAR_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe"})
_QWEN3_LINEAR_TYPES = {
    ".attn_q.weight": _T.Q4_K,
    ".attn_k.weight": _T.Q4_K,
    ".attn_v.weight": _T.Q6_K,
    ".attn_output.weight": _T.Q4_K,
    ".attn_qkv.weight": _T.Q4_K,
    ".attn_gate.weight": _T.Q4_K,
    ".ssm_ba.weight": _T.Q4_K,
    ".ssm_beta.weight": _T.Q4_K,
    ".ssm_alpha.weight": _T.Q4_K,
    ".ssm_out.weight": _T.Q4_K,
    ".ffn_down_exps.weight": _T.Q6_K,
    ".ffn_down_shexp.weight": _T.Q6_K,
    ".ffn_gate_exps.weight": _T.Q4_K,
    ".ffn_gate_shexp.weight": _T.Q4_K,
    ".ffn_up_exps.weight": _T.Q4_K,
    ".ffn_up_shexp.weight": _T.Q4_K,
}

# DeepSeek-style multi-head latent attention matrices: small and sensitive.
_MLA = ("attn_k_b.weight", "attn_v_b.weight", "attn_kv_a_mqa.weight", "attn_q_a.weight",
        "attn_q_b.weight")

# A K-quant that does not fit a row falls back to the nearest 32-block type with as many bits.
_FALLBACK = {_T.Q4_K: _T.Q5_0, _T.Q5_K: _T.Q5_1, _T.Q6_K: _T.Q8_0}


def _use_more_bits(i: int, n: int) -> bool:
    # llama.cpp's choice of layers that get more bits: the first and last eighth, and every
    # third layer in between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fit(t: GGMLType, ne0: int, name: str) -> GGMLType:
    if t in _FLOAT_TYPES or ne0 % block_size(t) == 0:
        return t
    fallback = _FALLBACK.get(t, t)
    if ne0 % block_size(fallback):
        fallback = _T.F16
    _log.warning("tensor %s: %d columns are not divisible by %d, required for %s - using %s",
                 name, ne0, block_size(t), t.name, fallback.name)
    return fallback


def _layer_group(name: str) -> str:
    # Ollama's Tensors.GroupLayers key: "blk.N" (or "v.blk.N", "mm.N"), else the first part.
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in ("blk", "mm"):
            if len(parts) > i + 2:
                return ".".join(parts[: i + 2])
            break
    return parts[0]


def _uint(metadata: Mapping[str, Any], key: str) -> int:
    v = metadata.get(key, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass
class _Policy:
    """Per-tensor types for one file, with the running layer counters the rules need."""

    file_type: FileType
    arch: str
    n_experts: int
    block_count: int
    n_attn_v: int  # attn_v / attn_qkv / attn_kv_b tensors in the file
    n_ffn_down: int  # blk.N layers in the file
    has_output: bool  # False when token_embd doubles as the output projection
    i_attn_v: int = 0
    i_ffn_down: int = 0

    @classmethod
    def for_file(cls, metadata: Mapping[str, Any], names: Iterable[str], ft: FileType) -> _Policy:
        names = list(names)
        arch = metadata.get("general.architecture", "")
        arch = arch if isinstance(arch, str) else ""
        return cls(
            file_type=ft,
            arch=arch,
            n_experts=max(1, _uint(metadata, f"{arch}.expert_count")),
            block_count=_uint(metadata, f"{arch}.block_count"),
            n_attn_v=sum(
                any(k in n for k in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"))
                for n in names
            ),
            n_ffn_down=len({g for g in map(_layer_group, names) if g.startswith("blk.")}),
            has_output="output.weight" in names,
        )

    def type_for(self, info: TensorInfo) -> GGMLType:
        name, ne0 = info.name, info.shape[-1]
        if not _should_quantize(name, info.shape):
            return info.type
        ft = self.file_type
        if self.arch in _QWEN3_LINEAR_ARCHS and ft in (_F.Q4_K_M, _F.Q4_K_S):
            for suffix, t in _QWEN3_LINEAR_TYPES.items():
                if name.endswith(suffix):
                    return _fit(t, ne0, name)  # (Ollama skips the fit here and would fail)
        requested = _DEFAULT_TYPE[ft]
        if self.arch == "laguna":
            if not _is_laguna_routed_expert(name):
                return info.type  # Ollama quantizes only laguna's routed experts
            requested = self._laguna_expert_type(name, requested)
        if requested in _FLOAT_TYPES:
            # llama.cpp adjusts only quantized targets; Ollama's port lost that guard and
            # turned output.weight into Q6_K on an F16 "quantization".
            return requested
        return _fit(self._adjust(name, ne0, requested), ne0, name)

    def _adjust(self, name: str, ne0: int, t: GGMLType) -> GGMLType:
        ft = self.file_type
        if name in ("output.weight", "output_norm.weight") or (
            not self.has_output and name == "token_embd.weight"
        ):
            if ne0 % block_size(t):
                return _T.Q8_0
            return t if t == _T.Q8_0 else _T.Q6_K
        if "attn_v.weight" in name:
            i = self.i_attn_v
            self.i_attn_v += 1
            if t != _T.Q8_0 and ft in (_F.Q4_K_M, _F.Q5_K_M) and _use_more_bits(i, self.n_attn_v):
                t = _T.Q6_K
            elif t != _T.Q8_0 and ft == _F.Q4_K_S and i < 4:
                t = _T.Q5_K
            # 8-expert models (Mixtral): a small price for much better attention values.
            return _T.Q8_0 if self.n_experts == 8 else t
        if "attn_k.weight" in name:
            return _T.Q8_0 if self.n_experts == 8 else t
        if any(k in name for k in _MLA):
            return _T.Q8_0
        if "ffn_down" in name:
            if "_exps" in name:
                if self.arch == "laguna":
                    return t
                # The dense ffn_down of the same layer came first and counted the layer.
                i = max(0, self.i_ffn_down - 1)
            else:
                i = self.i_ffn_down
                self.i_ffn_down += 1
            n = self.n_ffn_down
            if t != _T.Q8_0 and ft in (_F.Q4_K_M, _F.Q5_K_M):
                if _use_more_bits(i, n):
                    t = _T.Q6_K
            elif t != _T.Q8_0 and ft == _F.Q4_K_S and i < n // 8:
                t = _T.Q5_K
            return t
        if "attn_output.weight" in name:
            if t != _T.Q8_0 and self.n_experts == 8 and ft in (_F.Q4_K_S, _F.Q4_K_M):
                t = _T.Q5_K
            return t
        if "attn_qkv.weight" in name:
            if t != _T.Q8_0 and ft == _F.Q4_K_M:
                t = _T.Q5_K
            elif t != _T.Q8_0 and ft == _F.Q5_K_M:
                t = _T.Q6_K
        return t

    def _laguna_expert_type(self, name: str, requested: GGMLType) -> GGMLType:
        i, n = _block_index(name), self.block_count
        if name.endswith(".ffn_down_exps.weight") and i is not None and n > 0:
            if self.file_type == _F.Q4_K_M and requested != _T.Q8_0 and _use_more_bits(i, n):
                return _T.Q6_K
            if self.file_type == _F.Q4_K_S and requested != _T.Q8_0 and i < n // 8:
                return _T.Q5_K
        return requested


def _is_laguna_routed_expert(name: str) -> bool:
    return name.endswith(".weight") and any(
        k in name for k in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
    )


def _block_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    head = name[4:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def plan_tensor_types(src: GGUFFile, file_type: FileType) -> dict[str, GGMLType]:
    """The type each tensor of `src` gets (in file order) when quantized to `file_type`."""
    policy = _Policy.for_file(src.metadata, src.tensors, FileType(file_type))
    return {name: policy.type_for(info) for name, info in src.tensors.items()}


# -- the file ---------------------------------------------------------------------------------


@dataclass
class QuantizeSummary:
    """What quantize_gguf did."""

    source_file_type: FileType | None  # None when the source has no general.file_type
    file_type: FileType
    tensor_types: dict[str, GGMLType] = field(default_factory=dict)  # output type, file order
    converted: int = 0  # tensors re-encoded (the rest were copied byte for byte)
    source_bytes: int = 0  # tensor data, before
    output_bytes: int = 0  # tensor data, after


def _source_file_type(src: GGUFFile) -> FileType | None:
    ft = src.metadata.get("general.file_type")
    if isinstance(ft, int) and not isinstance(ft, bool):
        try:
            ft = FileType(ft)
        except ValueError:
            ft = None
        if ft in _FLOAT_FILE_TYPES:
            return ft
    elif ft is None and all(t.type in _FLOAT_TYPES for t in src.tensors.values()):
        return None  # no file type recorded, but every tensor is a float type: fine
    raise QuantizeError("quantization is only supported for F16, BF16 and F32 models")


def _requantized(src: GGUFFile, info: TensorInfo, out_type: GGMLType, threads: int | None,
                 report: Callable[[], None] | None) -> LazyTensor:
    """One tensor of the output, made when the writer reaches it; its source pages dropped after."""

    def load():
        # Zero-copy: a tensor that keeps its type is written straight from the mapping.
        raw = src.tensor_bytes(info.name)
        if out_type == info.type:
            return raw
        try:
            return convert_rows(raw, info.type, out_type, info.shape, threads=threads)
        except ValueError as e:
            raise QuantizeError(
                f"tensor '{info.name}': cannot convert {info.type.name} to {out_type.name}: {e}"
            ) from None

    def written() -> None:
        src.advise_dontneed(info.offset, info.nbytes)
        if report is not None:
            report()

    return LazyTensor(load, written)


def quantize_gguf(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    target: str,
    progress: Callable[[int, int], None] | None = None,
    *,
    threads: int | None = None,
) -> QuantizeSummary:
    """Write `dst_path` (atomically): the F32/F16/BF16 GGUF `src_path` quantized to `target`.

    Tensors are quantized one at a time as the file is written, so memory holds about one
    tensor. `progress(done_tensors, total)` is called before the first tensor and after each
    one is written.
    """
    file_type = parse_target(target)
    with GGUFFile(src_path) as src:
        summary = QuantizeSummary(_source_file_type(src), file_type)
        summary.tensor_types = plan_tensor_types(src, file_type)
        total = len(src.tensors)
        if progress is not None:
            progress(0, total)
        tensors = []
        for done, info in enumerate(src.tensors.values(), 1):
            out_type = summary.tensor_types[info.name]
            summary.source_bytes += info.nbytes
            summary.output_bytes += tensor_nbytes(out_type, info.shape)
            summary.converted += out_type != info.type
            report = None if progress is None else (lambda done=done: progress(done, total))
            tensors.append((info.name, _requantized(src, info, out_type, threads, report), out_type, info.shape))

        metadata = dict(src.metadata)
        value_types = dict(src.value_types)
        metadata["general.file_type"] = int(file_type)
        value_types["general.file_type"] = GGUFValueType.UINT32  # as llama.cpp and Ollama write it
        write_gguf(dst_path, metadata, tensors, value_types, array_types=src.array_types)
    return summary
