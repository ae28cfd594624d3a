"""Dequantization of GGUF tensor data to float32 torch tensors, for the reference backend.

Every decoder works on a whole chunk of blocks at once: the chunk's bytes are viewed as
``[n_blocks, type_size]`` uint8, each field is a column slice, and packed values are unpacked
with shifts and masks. The block layouts and formulas are ggml's (ggml-common.h and
``dequantize_row_*`` in ggml-quants.c); the float operations are done in the same order as the
``gguf.quants`` numpy reference, so results are bit-identical to it (the tests check that).
For the same reason a multiply and an add stay two ops: a fused multiply-add (addcmul) would
round once instead of twice. The float work is done in place in the output (integer codes
copied in, then scaled and offset): fresh float temporaries cost more than the arithmetic,
because every large allocation comes back from the OS as new pages to fault in.

Supported: F32, F16, BF16, F64, I8, I16, I32, I64 (converted to float32), Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS, MXFP4, NVFP4, Q1_0, Q2_0.
Not supported: Q8_1, the grid-based IQ1/IQ2/IQ3 types, TQ1_0, TQ2_0.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from pollama.fs.ggml_types import GGMLType, block_size, type_size

# Elements decoded per step. Bounds the temporaries (a few chunk-sized byte and index tensors)
# while keeping per-op overhead small; GPUs get bigger steps: every op is a kernel launch.
_CHUNK_ELEMENTS_CPU = 1 << 18
_CHUNK_ELEMENTS_GPU = 1 << 22

# The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
_KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# Twice the FP4 (E2M1) values; MXFP4's scale decoder halves to compensate.
_KVALUES_MXFP4 = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)

# (blocks [n, type_size] uint8, out [n, block_size] float32) -> None; writes into out.
Decoder = Callable[[torch.Tensor, torch.Tensor], None]


# --- helpers -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _codebook(values: tuple, device: torch.device) -> torch.Tensor:
    # Made once per device.
    return torch.tensor(values, dtype=torch.float32, device=device)


def _fields(b: torch.Tensor, shifts: tuple, mask: int) -> list[torch.Tensor]:
    # One op per shift by a Python int: much faster on CPU than shifting by a broadcast tensor.
    return [(b >> s) & mask if s else b & mask for s in shifts]


def _unpack(b: torch.Tensor, shifts: tuple, mask: int) -> torch.Tensor:
    """Bit fields of b [..., k] at each shift, as [..., len(shifts), k]."""
    return torch.stack(_fields(b, shifts, mask), dim=-2)


def _bits_lsb_first(b: torch.Tensor) -> torch.Tensor:
    """The bits of b [n, k] as [n, 8k], least significant bit of each byte first."""
    return torch.stack(_fields(b, tuple(range(8)), 1), dim=-1).reshape(b.shape[0], -1)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """A little-endian f16 field b [n, 2] as float32 [n, 1]."""
    return b.contiguous().view(torch.float16).float()


def _f32(b: torch.Tensor) -> torch.Tensor:
    """A little-endian f32 field b [n, 4] as float32 [n, 1]."""
    return b.contiguous().view(torch.float32)


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """Bytes [n, k] as 4-bit values [n, 2k]: all low nibbles, then all high nibbles."""
    return _unpack(b, (0, 4), 0xF).reshape(b.shape[0], -1)


def _lookup_into(out: torch.Tensor, codebook: tuple, idx: torch.Tensor) -> None:
    """out = codebook[idx], for a contiguous out with as many elements as idx."""
    table = _codebook(codebook, idx.device)
    # index_select is several times faster on CPU than advanced indexing (table[idx]).
    torch.index_select(table, 0, idx.reshape(-1).int(), out=out.view(-1))


# --- 32-element block types ----------------------------------------------------------------


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 16 bytes, element j in the low nibble of byte j, j+16 in the high one
    out.copy_(_nibbles(b[:, 2:18]).view(torch.int8) - 8)
    out.mul_(_f16(b[:, 0:2]))


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | m: f16 | qs: 16 bytes as in Q4_0, unsigned
    out.copy_(_nibbles(b[:, 4:20]))
    out.mul_(_f16(b[:, 0:2]))
    out.add_(_f16(b[:, 2:4]))


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qh: 32 fifth bits (bit j for element j) | qs: low 4 bits as in Q4_0
    q = _nibbles(b[:, 6:22]) | (_bits_lsb_first(b[:, 2:6]) << 4)
    out.copy_(q.view(torch.int8) - 16)
    out.mul_(_f16(b[:, 0:2]))


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | m: f16 | qh | qs, as Q5_0 but unsigned with an offset m
    out.copy_(_nibbles(b[:, 8:24]) | (_bits_lsb_first(b[:, 4:8]) << 4))
    out.mul_(_f16(b[:, 0:2]))
    out.add_(_f16(b[:, 2:4]))


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 32 int8
    out.copy_(b[:, 2:34].view(torch.int8))
    out.mul_(_f16(b[:, 0:2]))


def _iq4_nl(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 16 bytes of codebook indices, packed as in Q4_0
    _lookup_into(out, _KVALUES_IQ4NL, _nibbles(b[:, 2:18]))
    out.mul_(_f16(b[:, 0:2]))


def _e8m0_half(e: torch.Tensor) -> torch.Tensor:
    # 2**(e - 128) built from its bits: exponent field e - 1, or for e < 2 the subnormals
    # 2**-128 and 2**-127 (mantissa bits 21 and 22).
    e = e.int()
    bits = torch.where(e < 2, (e + 1) << 21, (e - 1) << 23)
    return bits.view(torch.float32)


def _mxfp4(b: torch.Tensor, out: torch.Tensor) -> None:
    # e: E8M0 shared exponent | qs: 16 bytes of FP4 codes, packed as in Q4_0
    _lookup_into(out, _KVALUES_MXFP4, _nibbles(b[:, 1:17]))
    out.mul_(_e8m0_half(b[:, 0:1]))


def _ue4m3(x: int) -> float:
    """ggml's UE4M3 scale byte (4 exponent bits, 3 mantissa bits, bias 7; the top bit ignored;
    0 and 0x7F mean 0), halved like MXFP4's to undo the doubled E2M1 codebook."""
    if x in (0, 0x7F):
        return 0.0
    exp, man = (x >> 3) & 0xF, x & 0x7
    raw = man * 2.0**-9 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return raw * 0.5  # every value is exact in float32


_UE4M3_SCALES = tuple(_ue4m3(x) for x in range(256))


def _nvfp4(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: 4 UE4M3 scale bytes, one per 16 values | qs: 32 bytes of FP4 codes; in sub-block s,
    # byte 8s + j holds value j in its low nibble and value j + 8 in its high one
    n = b.shape[0]
    y = out.view(n, 4, 16)
    _lookup_into(y, _KVALUES_MXFP4, _unpack(b[:, 4:36].reshape(n, 4, 8), (0, 4), 0xF).reshape(n, 4, 16))
    scales = torch.empty((n, 4), dtype=torch.float32, device=b.device)
    _lookup_into(scales, _UE4M3_SCALES, b[:, 0:4])
    y.mul_(scales.unsqueeze(-1))


# --- low-bit block types: 64 and 128 elements -----------------------------------------------


def _q1_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 16 bytes, element j is bit j % 8 of byte j // 8: +d when set, -d when not
    n = b.shape[0]
    y = out.view(n, 16, 8)
    y.copy_(_unpack(b[:, 2:18], (0, 1, 2, 3, 4, 5, 6, 7), 1).transpose(1, 2))
    y.mul_(2).sub_(1)  # {0, 1} -> {-1, +1}, exactly
    out.mul_(_f16(b[:, 0:2]))


def _q2_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 16 bytes, element j is bits 2(j % 4).. of byte j // 4: code - 1 (-1, 0, 1, 2) times d
    n = b.shape[0]
    y = out.view(n, 16, 4)
    y.copy_(_unpack(b[:, 2:18], (0, 2, 4, 6), 3).transpose(1, 2))
    y.sub_(1)
    out.mul_(_f16(b[:, 0:2]))


# --- K-quants: 256-element super-blocks ----------------------------------------------------


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # scales: 16 bytes (low nibble scale, high nibble min) | qs: 64 bytes | d: f16 | dmin: f16
    # Element 128h + 32s + l is bits 2s..2s+1 of qs[32h + l]; it belongs to sub-block of 16
    # number (128h + 32s + l) // 16, which is the element order of the [n, 16, 16] view.
    n = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    y = out.view(n, 16, 16)
    y.copy_(_unpack(b[:, 16:80].reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16))
    y.mul_((d * (sc & 0xF).float()).unsqueeze(-1))
    y.sub_((dmin * (sc >> 4).float()).unsqueeze(-1))


def _q3_k_scales(s: torch.Tensor) -> torch.Tensor:
    # 16 six-bit scales in 12 bytes: low nibbles in bytes 0-7 (scales 0-7 low, 8-15 high
    # nibble), top two bits in bytes 8-11 (scale i at shift 2*(i // 4) of byte 8 + i % 4).
    n = s.shape[0]
    low = _unpack(s[:, 0:8], (0, 4), 0xF).reshape(n, 16)
    high = _unpack(s[:, 8:12], (0, 2, 4, 6), 3).reshape(n, 16)
    return (low | (high << 4)).view(torch.int8) - 32


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # hmask: 32 bytes | qs: 64 bytes | scales: 12 bytes | d: f16
    # Low two bits are packed as in Q2_K; element 32k + l has its high bit at bit k of
    # hmask[l], and a clear high bit means "subtract 4".
    n = b.shape[0]
    d = _f16(b[:, 108:110])
    low = _unpack(b[:, 32:96].reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    high = _unpack(b[:, 0:32], tuple(range(8)), 1).reshape(n, 16, 16)
    y = out.view(n, 16, 16)
    y.copy_(low.view(torch.int8) - ((high ^ 1) << 2).view(torch.int8))
    y.mul_((d * _q3_k_scales(b[:, 96:108]).float()).unsqueeze(-1))


def _k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 8 six-bit scales and 8 six-bit mins in 12 bytes. Sub-blocks 0-3: scale in bytes 0-3 and
    # min in bytes 4-7 (low 6 bits). Sub-blocks 4-7: low 4 bits from the nibbles of bytes 8-11
    # (scale low, min high), top 2 bits from the spare top bits of bytes 0-3 and 4-7.
    a, m, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat((a & 63, (c & 0xF) | ((a >> 6) << 4)), dim=1)
    mins = torch.cat((m & 63, (c >> 4) | ((m >> 6) << 4)), dim=1)
    return scale, mins


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | dmin: f16 | scales: 12 bytes | qs: 128 bytes
    # Each 32 bytes of qs hold two sub-blocks of 32: low nibbles, then high nibbles.
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k4_scales(b[:, 4:16])
    y = out.view(n, 8, 32)
    y.copy_(_unpack(b[:, 16:144].reshape(n, 4, 32), (0, 4), 0xF).reshape(n, 8, 32))
    y.mul_((d * sc.float()).unsqueeze(-1))
    y.sub_((dmin * mn.float()).unsqueeze(-1))


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes | qs: 128 bytes
    # Low 4 bits as in Q4_K; the fifth bit of element 32k + l is bit k of qh[l].
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k4_scales(b[:, 4:16])
    low = _unpack(b[:, 48:176].reshape(n, 4, 32), (0, 4), 0xF).reshape(n, 8, 32)
    high = _unpack(b[:, 16:48], tuple(range(8)), 1)
    y = out.view(n, 8, 32)
    y.copy_(low | (high << 4))
    y.mul_((d * sc.float()).unsqueeze(-1))
    y.sub_((dmin * mn.float()).unsqueeze(-1))


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # ql: 128 bytes | qh: 64 bytes | scales: 16 int8 | d: f16
    # Per half of 128 elements (64 bytes of ql, 32 of qh), group g of 32 elements takes its
    # low 4 bits from nibble g // 2 of ql[32 * (g % 2) + l] and its top 2 bits from bits
    # 2g..2g+1 of qh[l]. Each 16 consecutive elements share one scale.
    n = b.shape[0]
    low = _unpack(b[:, 0:128].reshape(n, 2, 64), (0, 4), 0xF).reshape(n, 2, 4, 32)
    high = _unpack(b[:, 128:192].reshape(n, 2, 32), (0, 2, 4, 6), 3)
    y = out.view(n, 16, 16)
    y.copy_((low | (high << 4)).view(torch.int8).reshape(n, 16, 16) - 32)
    d = _f16(b[:, 208:210])
    y.mul_((d * b[:, 192:208].view(torch.int8).float()).unsqueeze(-1))


def _q8_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f32 | qs: 256 int8 | bsums: 16 int16 (only used by dot products)
    out.copy_(b[:, 4:260].view(torch.int8))
    out.mul_(_f32(b[:, 0:4]))


def _iq4_xs(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | scales_h: u16 | scales_l: 4 bytes | qs: 128 bytes
    # Sub-block k of 32 has a 6-bit scale: low 4 bits in nibble k % 2 of scales_l[k // 2], top
    # 2 bits at bit 2k of scales_h; its 16 bytes of codebook indices are packed as in Q4_0.
    n = b.shape[0]
    d = _f16(b[:, 0:2])
    low = _unpack(b[:, 4:8], (0, 4), 0xF).transpose(1, 2).reshape(n, 8)
    high = _unpack(b[:, 2:4], (0, 2, 4, 6), 3).transpose(1, 2).reshape(n, 8)
    ls = (low | (high << 4)).view(torch.int8) - 32
    idx = _unpack(b[:, 8:136].reshape(n, 8, 16), (0, 4), 0xF).reshape(n, 8, 32)
    y = out.view(n, 8, 32)
    _lookup_into(y, _KVALUES_IQ4NL, idx)
    y.mul_((d * ls.float()).unsqueeze(-1))


_DECODERS: dict[GGMLType, Decoder] = {
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.Q8_K: _q8_k,
    GGMLType.IQ4_NL: _iq4_nl,
    GGMLType.IQ4_XS: _iq4_xs,
    GGMLType.MXFP4: _mxfp4,
    GGMLType.NVFP4: _nvfp4,
    GGMLType.Q1_0: _q1_0,
    GGMLType.Q2_0: _q2_0,
}

# Plain numbers, cast to float32 with round-to-nearest-even like numpy's astype.
_CASTS: dict[GGMLType, torch.dtype] = {
    GGMLType.F32: torch.float32,
    GGMLType.F16: torch.float16,
    GGMLType.BF16: torch.bfloat16,
    GGMLType.F64: torch.float64,
    GGMLType.I8: torch.int8,
    GGMLType.I16: torch.int16,
    GGMLType.I32: torch.int32,
    GGMLType.I64: torch.int64,
}

SUPPORTED_TYPES: frozenset[GGMLType] = frozenset(_DECODERS) | frozenset(_CASTS)


def _as_bytes(raw) -> np.ndarray:
    # A flat uint8 view of the caller's buffer; copies only if it is not contiguous.
    if not isinstance(raw, np.ndarray):
        raw = np.frombuffer(raw, dtype=np.uint8)
    return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)


def dequantize(
    raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Decode the bytes of a GGUF tensor into float32 of the given PyTorch-order shape."""
    try:
        t = GGMLType(int(ggml_type))
    except ValueError:
        raise ValueError(f"cannot dequantize GGML type {int(ggml_type)}: no such type") from None
    if t not in SUPPORTED_TYPES:
        raise ValueError(f"cannot dequantize GGML type {t.name} ({int(t)}): not supported")
    bs, ts = block_size(t), type_size(t)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{t.name} tensor has a negative dimension in shape {shape}")
    row = shape[-1] if shape else 1
    if row % bs:
        raise ValueError(
            f"{t.name} tensor of shape {shape}: row length {row} is not a multiple of "
            f"the block size {bs}"
        )
    data = _as_bytes(raw)
    n_elements = int(np.prod(shape, dtype=np.int64))
    n_blocks = n_elements // bs
    if data.size != n_blocks * ts:
        raise ValueError(
            f"{t.name} tensor of shape {shape} needs {n_blocks * ts} bytes "
            f"({n_blocks} blocks of {ts}), got {data.size}"
        )

    device = torch.device(device)
    out = torch.empty((n_blocks, bs), dtype=torch.float32, device=device)
    chunk_elements = _CHUNK_ELEMENTS_CPU if device.type == "cpu" else _CHUNK_ELEMENTS_GPU
    step = max(1, chunk_elements // bs)
    for start in range(0, n_blocks, step):
        stop = min(start + step, n_blocks)
        # np.array makes our own writable copy of just this chunk: the source may be a
        # read-only mmap, which torch.from_numpy would refuse to share without a warning.
        chunk = torch.from_numpy(np.array(data[start * ts : stop * ts]))
        if t in _CASTS:
            # Cast on the CPU, before the transfer: MPS has no float64.
            out[start:stop].copy_(chunk.view(_CASTS[t]).float().view(-1, 1))
        else:
            _DECODERS[t](chunk.to(device).view(stop - start, ts), out[start:stop])
    return out.view(shape)
