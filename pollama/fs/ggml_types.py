"""GGML tensor types and GGUF file types: block geometry and display names."""

from __future__ import annotations

import enum
from collections.abc import Sequence


class GGMLType(enum.IntEnum):
    """A ggml tensor type, numbered as in ggml.h (and in GGUF tensor infos)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    # 4 and 5 were Q4_2 / Q4_3, removed from ggml long ago.
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    # 31..33 were the Q4_0_4_4 / Q4_0_4_8 / Q4_0_8_8 repack types, now runtime-only.
    TQ1_0 = 34
    TQ2_0 = 35
    # 36..38 were the IQ4_NL_4_4 / _4_8 / _8_8 repack types, now runtime-only.
    MXFP4 = 39
    NVFP4 = 40  # 64 E2M1 values, a UE4M3 scale per 16
    Q1_0 = 41  # 128 signs times one f16 scale
    Q2_0 = 42  # 64 values in {-1, 0, 1, 2} times one f16 scale


# (elements per block, bytes per block), from ggml's type traits table.
_BLOCK: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
    GGMLType.Q2_0: (64, 18),
}


def _lookup(t: int) -> tuple[int, int]:
    try:
        return _BLOCK[GGMLType(t)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown ggml type {t!r}") from None


def block_size(t: int) -> int:
    """Number of elements in one block of type `t`."""
    return _lookup(t)[0]


def type_size(t: int) -> int:
    """Number of bytes in one block of type `t`."""
    return _lookup(t)[1]


def tensor_nbytes(t: int, shape: Sequence[int]) -> int:
    """Bytes taken by a tensor of type `t` and PyTorch-order `shape` (innermost dim last)."""
    bs, ts = _lookup(t)
    if len(shape) == 0:
        raise ValueError("a tensor shape needs at least one dimension")
    n_rows = 1
    for d in shape[:-1]:
        if d < 0:
            raise ValueError(f"negative dimension in shape {tuple(shape)}")
        n_rows *= d
    row = shape[-1]
    if row < 0:
        raise ValueError(f"negative dimension in shape {tuple(shape)}")
    if row % bs:
        raise ValueError(
            f"row size {row} is not a multiple of the block size {bs} of {GGMLType(t).name}"
        )
    return n_rows * (row // bs) * ts


class FileType(enum.IntEnum):
    """`general.file_type` values (llama.cpp's llama_ftype, plus Ollama's MXFP4 slot).

    Note: `name()` is Ollama's display string ("Q4_K_M", "F16", "unknown");
    the enum member name is still available as `._name_`.
    """

    ALL_F32 = 0
    MOSTLY_F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    # llama.cpp retired 4 (Q4_1_F16); Ollama reuses it for MXFP4 files.
    MXFP4 = 4
    Q8_0 = 7
    Q5_0 = 8
    Q5_1 = 9
    Q2_K = 10
    Q3_K_S = 11
    Q3_K_M = 12
    Q3_K_L = 13
    Q4_K_S = 14
    Q4_K_M = 15
    Q5_K_S = 16
    Q5_K_M = 17
    Q6_K = 18
    IQ2_XXS = 19
    IQ2_XS = 20
    Q2_K_S = 21
    IQ3_XS = 22
    IQ3_XXS = 23
    IQ1_S = 24
    IQ4_NL = 25
    IQ3_S = 26
    IQ3_M = 27
    IQ2_S = 28
    IQ2_M = 29
    IQ4_XS = 30
    IQ1_M = 31
    BF16 = 32
    TQ1_0 = 36
    TQ2_0 = 37
    MXFP4_MOE = 38  # llama.cpp's number for gpt-oss style files
    NVFP4 = 39
    Q1_0 = 40
    Q2_0 = 41

    def name(self) -> str:  # type: ignore[override]
        """Ollama's display name for this file type ("unknown" for types Ollama doesn't name)."""
        return _FILE_TYPE_DISPLAY.get(self, "unknown")


# Ollama's names (fs/ggml/type.go FileType.String() as of v0.32.15, the release pollama
# follows); the string goes out on the wire (details.quantization_level). Since it runs GGUF
# files through llama-server, it names the IQ/TQ types and llama.cpp's MXFP4_MOE, NVFP4 and
# Q1_0, and no longer names 4 (llama.cpp's retired Q4_1_F16, which Ollama's own gpt-oss
# files once used for MXFP4): that and Q2_0 show as "unknown".
_FILE_TYPE_DISPLAY: dict[int, str] = {
    FileType.ALL_F32: "F32",
    FileType.MOSTLY_F16: "F16",
    FileType.Q4_0: "Q4_0",
    FileType.Q4_1: "Q4_1",
    FileType.Q8_0: "Q8_0",
    FileType.Q5_0: "Q5_0",
    FileType.Q5_1: "Q5_1",
    FileType.Q2_K: "Q2_K",
    FileType.Q3_K_S: "Q3_K_S",
    FileType.Q3_K_M: "Q3_K_M",
    FileType.Q3_K_L: "Q3_K_L",
    FileType.Q4_K_S: "Q4_K_S",
    FileType.Q4_K_M: "Q4_K_M",
    FileType.Q5_K_S: "Q5_K_S",
    FileType.Q5_K_M: "Q5_K_M",
    FileType.Q6_K: "Q6_K",
    FileType.IQ2_XXS: "IQ2_XXS",
    FileType.IQ2_XS: "IQ2_XS",
    FileType.Q2_K_S: "Q2_K_S",
    FileType.IQ3_XS: "IQ3_XS",
    FileType.IQ3_XXS: "IQ3_XXS",
    FileType.IQ1_S: "IQ1_S",
    FileType.IQ4_NL: "IQ4_NL",
    FileType.IQ3_S: "IQ3_S",
    FileType.IQ3_M: "IQ3_M",
    FileType.IQ2_S: "IQ2_S",
    FileType.IQ2_M: "IQ2_M",
    FileType.IQ4_XS: "IQ4_XS",
    FileType.IQ1_M: "IQ1_M",
    FileType.BF16: "BF16",
    FileType.TQ1_0: "TQ1_0",
    FileType.TQ2_0: "TQ2_0",
    FileType.MXFP4_MOE: "MXFP4_MOE",
    FileType.NVFP4: "NVFP4",
    FileType.Q1_0: "Q1_0",
}


def file_type_name(value: int) -> str:
    """Ollama's display name for a raw `general.file_type` value, "unknown" if not one."""
    return _FILE_TYPE_DISPLAY.get(value, "unknown")
