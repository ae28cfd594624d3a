"""Hand-crafted good and bad files: every defect is a one-line GGUFError naming it."""

import os
import re
import struct

import pytest

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile, GGUFValueType
from tests.fs.conftest import (
    ARRAY, BOOL, F32, I32, STRING, U8, U32,
    Build, Tensor, f32_tensors, good_build, gstr, kv, open_fails,
)


def test_good_file_parses(build):
    with GGUFFile(build(good_build())) as f:
        md = f.metadata
        assert md["u8"] == 200 and md["i8"] == -5 and md["u16"] == 60000 and md["i16"] == -30000
        assert md["u32"] == 4_000_000_000 and md["i32"] == -2_000_000_000 and md["f32"] == 0.5
        assert md["bool"] is True and md["u64"] == 2**64 - 1 and md["i64"] == -(2**63)
        assert md["f64"] == 1e300 and md["str.empty"] == "" and md["str.utf8"] == "héllo ▁ 中"
        assert md["arr.i32"] == [1, -2, 3] and md["arr.str"] == ["a", "", "bc"]
        assert md["arr.empty"] == [] and md["arr.bool"] == [True, False]
        assert md["arr.nested"] == [[1, 2], ["x"], [[7]]]
        assert f.value_types["u64"] == GGUFValueType.UINT64
        assert f.array_types["arr.i32"] == GGUFValueType.INT32
        assert f.array_types["arr.nested"] == [GGUFValueType.UINT8, GGUFValueType.STRING, [GGUFValueType.INT64]]
        assert list(f.tensors) == ["a.weight", "b.bias", "q.weight"]
        a, b, q = f.tensors.values()
        assert a.shape == (2, 8) and a.ne == (8, 2) and a.nbytes == 64 and a.n_elements == 16
        assert b.offset == a.offset + 64 and b.offset % 32 == 0
        assert q.shape == (2, 32) and q.nbytes == 36 and f.tensor_bytes("q.weight").tobytes() == b"\1" * 36
        assert f.data_offset == a.offset and f.data_offset % 32 == 0


def test_version_2_parses(build):
    b = good_build()
    b.version = 2
    with GGUFFile(build(b)) as f:
        assert f.version == 2 and len(f.tensors) == 3


def test_custom_alignment(build):
    tensors = [Tensor("x", (4,), 0, 0), Tensor("y", (4,), 0, 64)]
    b = Build(kvs=[kv("general.alignment", U32, 64)], tensors=tensors, alignment=64, data=b"\0" * 80)
    with GGUFFile(build(b)) as f:
        assert f.alignment == 64 and f.data_offset % 64 == 0
        assert f.tensors["y"].offset == f.data_offset + 64


def test_tensors_listed_out_of_offset_order(build):
    tensors = [Tensor("late", (8,), 0, 32), Tensor("early", (8,), 0, 0)]
    with GGUFFile(build(Build(tensors=tensors, data=b"\0" * 64))) as f:
        assert list(f.tensors) == ["late", "early"]


def test_invalid_utf8_is_kept(build):
    b = Build(kvs=[kv("k", STRING, b"a\xff"), kv("t", ARRAY, (STRING, [b"\xc3", b"ok"]))])
    with GGUFFile(build(b)) as f:
        assert f.metadata["k"].encode("utf-8", "surrogateescape") == b"a\xff"
        assert [s.encode("utf-8", "surrogateescape") for s in f.metadata["t"]] == [b"\xc3", b"ok"]


# -- broken files -------------------------------------------------------------------


def test_truncated_at_every_byte(build):
    data = good_build().bytes()
    for cut in range(len(data)):
        msg = open_fails(build(data[:cut]))
        assert re.search(r"truncated|too small|cannot fit|past the end of the file|only \d+ bytes are left", msg), (cut, msg)


def test_truncated_real_file(build, small_vocab):
    data = small_vocab.read_bytes()
    # Every few bytes through the header, then across the vocabulary; tracing memory
    # (slow) only where the parse stops early.
    for cut in range(0, 4096, 7):
        msg = open_fails(build(data[:cut]))
        assert re.search(r"truncated|too small|only \d+ bytes are left", msg), (cut, msg)
    for cut in list(range(4096, len(data), len(data) // 31)) + [len(data) - 1]:
        msg = open_fails(build(data[:cut]), trace=False)
        assert re.search(r"truncated|only \d+ bytes are left", msg), (cut, msg)


def test_tensor_past_eof(build):
    tensors, data = f32_tensors(("blk.0.attn_q.weight", (16, 16)))
    p = build(Build(tensors=tensors, data=data[:-100]))
    size = p.stat().st_size
    end = size + 100
    msg = open_fails(p)
    assert msg == f"{p}: tensor 'blk.0.attn_q.weight' data ends at byte {end} past the end of the file ({size} bytes)"


def test_overlapping_tensors(build):
    tensors = [Tensor("a", (16,), 0, 0), Tensor("b", (16,), 0, 32)]  # a is 64 bytes
    msg = open_fails(build(Build(tensors=tensors, data=b"\0" * 128)))
    assert "tensors 'a' and 'b' overlap" in msg
    same = [Tensor("a", (8,), 0, 0), Tensor("b", (8,), 0, 0)]
    assert "overlap" in open_fails(build(Build(tensors=same, data=b"\0" * 32)))


@pytest.mark.parametrize("ne, expect", [
    ((2**62, 2**62), "dimensions [4611686018427387904, 4611686018427387904] are too large"),
    ((2**64 - 1,), "too large"),
    ((2**32, 2**32, 2**32), "too large"),
    ((2**62,), "past the end of the file"),  # element count ok, bytes not there
    ((4, 0), "has a zero dimension [4, 0]"),
])
def test_absurd_dimensions(build, ne, expect):
    msg = open_fails(build(Build(tensors=[Tensor("x", ne, 0, 0)], data=b"\0" * 64)))
    assert expect in msg and "'x'" in msg


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(build, n_dims):
    t = Tensor("x", (4,), 0, 0, n_dims=n_dims)
    msg = open_fails(build(Build(tensors=[t], data=b"\0" * 64)))
    assert f"tensor 'x' has {n_dims} dimensions (must be 1 to 4)" in msg


@pytest.mark.parametrize("field, count, expect", [
    ("n_tensors", 2**62, "header claims 4611686018427387904 tensors, over the limit"),
    ("n_kv", 2**62, "header claims 4611686018427387904 metadata keys, over the limit"),
    ("n_tensors", 2**64 - 1, "over the limit"),
    ("n_tensors", 100_000, "cannot fit in the file"),
    ("n_kv", 100_000, "cannot fit in the file"),
])
def test_absurd_counts(build, field, count, expect):
    b = good_build()
    setattr(b, field, count)
    assert expect in open_fails(build(b))


def test_count_limits_are_configurable(build):
    p = build(good_build())
    assert "over the limit of 2" in open_fails(p, max_tensors=2)
    assert "over the limit of 5" in open_fails(p, max_kv=5)
    assert "over the limit of 3 bytes" in open_fails(p, max_string=3)
    assert "key 'arr.i32' has 3 elements, over the limit of 2" in open_fails(p, max_array=2)
    assert "deeper than 1 levels" in open_fails(p, max_depth=1)
    # the element budget covers all arrays together (good_build holds 16, counting nested ones)
    assert "metadata arrays hold over 12 elements in all (at key 'arr.nested'" in open_fails(p, max_array=12)
    GGUFFile(p, max_array=16).close()


def test_nested_arrays_share_one_budget(build):
    # 1000 arrays of 1000 bytes: each array is within the limit, all of them are not
    inner = struct.pack("<IQ", U8, 1000) + b"\0" * 1000
    raw = struct.pack("<IQ", ARRAY, 1000) + inner * 1000
    msg = open_fails(build(Build(kvs=[kv("k", ARRAY, raw=raw)])), max_array=100_000)
    assert "metadata arrays hold over 100000 elements in all (at key 'k'[99])" in msg


@pytest.mark.parametrize("length, expect", [
    (2**62, "has length 4611686018427387904, over the limit"),
    (2**64 - 1, "over the limit"),
    (1 << 40, "over the limit"),
    (5000, "file is truncated"),
])
def test_huge_string_length(build, length, expect):
    # in a key, a string value, a tensor name and a string array element
    cases = [
        Build(kvs=[gstr("k", length=length) + b"k"]),
        Build(kvs=[kv("k", STRING, raw=gstr("v", length=length))]),
        Build(kvs=[kv("k", ARRAY, raw=struct.pack("<IQ", STRING, 2) + gstr("ok") + gstr("v", length=length))]),
    ]
    for b in cases:
        b.kvs.append(kv("pad", ARRAY, (U8, [0] * 64)))
        assert expect in open_fails(build(b))
    t = Tensor("x", (4,), 0, 0)
    b = Build(kvs=[], tensors=[t], data=b"\0" * 64)
    raw = b.bytes().replace(gstr("x"), gstr("x", length=length), 1)
    assert re.search("over the limit|truncated", open_fails(build(raw)))


@pytest.mark.parametrize("etype, count, expect", [
    (U8, 2**62, "has 4611686018427387904 elements, over the limit"),
    (U32, 1_000_000, "claims 1000000 elements of type UINT32 (4000000 bytes at least) but only"),
    (STRING, 1_000_000, "claims 1000000 elements of type STRING"),
    (ARRAY, 1_000_000, "claims 1000000 elements of type ARRAY"),
])
def test_huge_array_length(build, etype, count, expect):
    b = Build(kvs=[kv("tokenizer.ggml.tokens", ARRAY, raw=struct.pack("<IQ", etype, count) + b"\0" * 256)])
    msg = open_fails(build(b))
    assert expect in msg and "key 'tokenizer.ggml.tokens'" in msg


def test_deep_nesting(build):
    raw = b""
    for _ in range(50):
        raw = struct.pack("<IQ", ARRAY, 1) + raw
    raw += struct.pack("<IQ", U8, 0)
    msg = open_fails(build(Build(kvs=[kv("deep", ARRAY, raw=raw)])))
    assert "nests arrays deeper than 8 levels" in msg


def test_unknown_tensor_type(build):
    msg = open_fails(build(Build(tensors=[Tensor("x", (32,), 99, 0)], data=b"\0" * 128)))
    assert msg.endswith("unknown tensor type 99 for tensor 'x'")
    # removed ggml types are unknown too
    assert "unknown tensor type 5 " in open_fails(build(Build(tensors=[Tensor("x", (32,), 5, 0)], data=b"\0" * 128)))


def test_type_4_is_ollamas_mxfp4(build):
    """As Ollama reads it (its gpt-oss files): MXFP4 with the codes in OpenAI's order."""
    with GGUFFile(build(Build(tensors=[Tensor("x", (32,), 4, 0)], data=b"\0" * 128))) as f:
        info = f.tensors["x"]
        assert info.type == GGMLType.MXFP4 and info.paired_codes and info.nbytes == 17


def test_partial_block(build):
    msg = open_fails(build(Build(tensors=[Tensor("x", (33, 2), 2, 0)], data=b"\0" * 128)))
    assert "tensor 'x' row size 33 is not a multiple of the Q4_0 block size 32" in msg


def test_unknown_value_types(build):
    assert "unknown value type 13 for key 'k'" in open_fails(build(Build(kvs=[kv("k", 13, raw=b"\0" * 16)])))
    raw = struct.pack("<IQ", 77, 1) + b"\0" * 16
    assert "unknown array element type 77 for key 'k'" in open_fails(build(Build(kvs=[kv("k", ARRAY, raw=raw)])))


def test_bad_bools(build):
    assert "invalid value 2" in open_fails(build(Build(kvs=[kv("k", BOOL, 2)])))
    assert "invalid value 7" in open_fails(build(Build(kvs=[kv("k", ARRAY, (BOOL, [1, 7, 0]))])))


@pytest.mark.parametrize("magic, expect", [
    (b"GGUG", "not a GGUF file (bad magic b'GGUG')"),
    (b"\0\0\0\0", "not a GGUF file"),
    (b"FUGG", "big-endian GGUF files are not supported"),
    (b"tjgg", "legacy ggjt model format is not supported"),
    (b"lmgg", "legacy ggml model format"),
])
def test_bad_magic(build, magic, expect):
    b = good_build()
    b.magic = magic
    assert expect in open_fails(build(b))


@pytest.mark.parametrize("version, expect", [
    (1, "GGUF version 1 is not supported (supported: 2, 3)"),
    (0, "unsupported GGUF version 0"),
    (4, "unsupported GGUF version 4 (supported: 2, 3)"),
    (2**32 - 1, "unsupported GGUF version 4294967295"),
])
def test_bad_version(build, version, expect):
    b = good_build()
    b.version = version
    assert expect in open_fails(build(b))


def test_big_endian_file(build, tmp_path):
    b = good_build()
    b.version_fmt = ">I"  # what a big-endian writer produces after the "GGUF" bytes
    assert "big-endian GGUF files are not supported" in open_fails(build(b))
    import gguf

    w = gguf.GGUFWriter(tmp_path / "be.gguf", "llama", endianess=gguf.GGUFEndian.BIG)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert "big-endian" in open_fails(tmp_path / "be.gguf")


@pytest.mark.parametrize("vtype, value, expect", [
    (U32, 0, "general.alignment 0 is invalid (must be a power of two"),
    (U32, 48, "general.alignment 48 is invalid"),
    (U32, 1 << 20, "general.alignment 1048576 is invalid"),
    (I32, -32, "general.alignment -32 is invalid"),
    (STRING, "32", "general.alignment must be an integer, not STRING"),
    (F32, 32.0, "general.alignment must be an integer, not FLOAT32"),
])
def test_bad_alignment(build, vtype, value, expect):
    assert expect in open_fails(build(Build(kvs=[kv("general.alignment", vtype, value)])))


def test_misaligned_offset(build):
    msg = open_fails(build(Build(tensors=[Tensor("x", (4,), 0, 16)], data=b"\0" * 64)))
    assert "tensor 'x' data offset 16 is not a multiple of the alignment 32" in msg


def test_duplicates(build):
    b = Build(kvs=[kv("a", U8, 1), kv("b", U8, 1), kv("a", U32, 2)])
    assert "duplicate metadata key 'a'" in open_fails(build(b))
    b = Build(tensors=[Tensor("w", (8,), 0, 0), Tensor("w", (8,), 0, 32)], data=b"\0" * 64)
    assert "duplicate tensor name 'w'" in open_fails(build(b))


def test_bad_names(build):
    assert "key #0 is empty" in open_fails(build(Build(kvs=[kv("", U8, 1), kv("pad", U8, 0)])))
    assert "key #1 is not valid UTF-8" in open_fails(build(Build(kvs=[kv("a", U8, 1), kv(b"\xff", U8, 1)])))
    assert "key #0 has length 70000, over the limit of 65535" in open_fails(build(Build(kvs=[kv("k" * 70000, U8, 1)])))
    b = Build(tensors=[Tensor("", (8,), 0, 0)], data=b"\0" * 32)
    assert "name of tensor #0 is empty" in open_fails(build(b))
    b = Build(tensors=[Tensor("n" * 64, (8,), 0, 0)], data=b"\0" * 32)
    assert "name of tensor #0 has length 64, over the limit of 63 bytes" in open_fails(build(b))
    # A tensor name is text handed to ggml and looked up by models: not UTF-8 is refused.
    b = Build(tensors=[Tensor(b"blk.0\xff.weight", (8,), 0, 0)], data=b"\0" * 32)
    assert "name of tensor #0 is not valid UTF-8: b'blk.0\\xff.weight'" in open_fails(build(b))


def test_not_a_file(tmp_path):
    assert "cannot open" in open_fails(tmp_path / "missing.gguf")
    assert "cannot open: not a regular file" in open_fails(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    assert "cannot open: not a regular file" in open_fails(tmp_path / "fifo")  # and no hang
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "file is too small to be GGUF (0 bytes)" in open_fails(tmp_path / "empty.gguf")
