"""Hostile or broken GGUF files through the real command: one line naming the problem, exit 1.

The files are built byte by byte with the GGUF reader tests' builder.
"""

from __future__ import annotations

import struct

import pytest

from fs.conftest import ARRAY, STRING, U32, Build, Tensor, f32_tensors, good_build, gstr, kv
from cliproc import assert_one_line_error, pollama


def absurd_dimension() -> Build:
    b = good_build()
    b.tensors[0] = Tensor("a.weight", (2**40, 2**40), 0, 0)
    return b


def absurd_tensor_count() -> Build:
    b = good_build()
    b.n_tensors = 2**62
    return b


def absurd_kv_count() -> Build:
    b = good_build()
    b.n_kv = 2**60
    return b


def huge_string() -> Build:
    return Build(kvs=[kv("general.architecture", STRING, raw=gstr("llama", length=2**61))])


def huge_array() -> Build:
    return Build(kvs=[kv("tokenizer.ggml.tokens", ARRAY, raw=struct.pack("<IQ", STRING, 2**50))])


def overlapping_tensors() -> Build:
    tensors, data = f32_tensors(("a.weight", (8, 2)), ("b.weight", (8, 2)))
    tensors[1].offset = 32  # inside a.weight's 64 bytes
    return Build(kvs=[kv("general.architecture", STRING, "llama")], tensors=tensors, data=data)


def data_past_eof() -> Build:
    b = good_build()
    b.data = b.data[:-20]
    return b


def unknown_tensor_type() -> Build:
    tensors, data = f32_tensors(("a.weight", (8, 2)))
    tensors[0].type = 77
    return Build(kvs=[kv("general.architecture", STRING, "llama")], tensors=tensors, data=data)


def bad_magic() -> Build:
    b = good_build()
    b.magic = b"GGML"
    return b


def bad_alignment() -> Build:
    b = good_build()
    b.kvs.append(kv("general.alignment", U32, 3))
    return b


CASES = {
    "absurd dimension": (absurd_dimension, "a.weight"),
    "absurd tensor count": (absurd_tensor_count, "tensor"),
    "absurd kv count": (absurd_kv_count, ""),
    "huge string length": (huge_string, "general.architecture' has length"),
    "huge array length": (huge_array, "elements, over the limit"),
    "overlapping tensors": (overlapping_tensors, "overlap"),
    "tensor data past EOF": (data_past_eof, "past the end"),
    "unknown tensor type": (unknown_tensor_type, "77"),
    "bad magic": (bad_magic, ""),
    "bad alignment": (bad_alignment, "alignment"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_is_one_line_error(case, tmp_path):
    make, needle = CASES[case]
    path = make().write(tmp_path / "bad.gguf")
    line = assert_one_line_error(pollama("run", str(path), "hi"), needle)
    assert str(path) in line or "bad.gguf" in line, line  # names the file at fault
    assert_one_line_error(pollama("tokenize", str(path), stdin="hi"), needle)
