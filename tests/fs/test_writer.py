"""write_gguf: round trips through our reader and gguf-py's, conversions, errors, atomicity."""

import os

import gguf
import numpy as np
import pytest
from gguf import GGUFReader

from pollama.fs import writer as writer_mod
from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile, GGUFValueType as V
from pollama.fs.writer import write_gguf
from tests.fs.conftest import good_build, vocab_files


def rewrite(src: GGUFFile, dst) -> None:
    tensors = [(n, src.tensor_bytes(n), t.type, t.shape) for n, t in src.tensors.items()]
    write_gguf(dst, src.metadata, tensors, src.value_types, array_types=src.array_types)


def assert_same(a: GGUFFile, b: GGUFFile) -> None:
    assert list(a.metadata) == list(b.metadata)
    assert a.metadata == b.metadata
    assert a.value_types == b.value_types and a.array_types == b.array_types
    assert a.alignment == b.alignment
    assert [(t.name, t.shape, t.type, t.nbytes) for t in a.tensors.values()] == \
        [(t.name, t.shape, t.type, t.nbytes) for t in b.tensors.values()]
    for name in a.tensors:
        assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name


def test_round_trip_every_type(build, tmp_path):
    src = build(good_build())
    with GGUFFile(src) as a:
        rewrite(a, tmp_path / "out.gguf")
        with GGUFFile(tmp_path / "out.gguf") as b:
            assert_same(a, b)
            # exact types survive, including the nested array's inner types
            assert b.value_types["i16"] == V.INT16 and b.value_types["f64"] == V.FLOAT64
            assert b.array_types["arr.nested"] == [V.UINT8, V.STRING, [V.INT64]]
            assert b.metadata["arr.empty"] == [] and b.array_types["arr.empty"] == V.FLOAT32
    # our layout is gguf's canonical one: a second pass is byte-identical
    with GGUFFile(tmp_path / "out.gguf") as b:
        rewrite(b, tmp_path / "out2.gguf")
    assert (tmp_path / "out.gguf").read_bytes() == (tmp_path / "out2.gguf").read_bytes()


@pytest.mark.parametrize("path", vocab_files()[:3], ids=lambda p: p.name)
def test_round_trip_vocab_is_byte_identical(path, tmp_path):
    with GGUFFile(path) as a:
        rewrite(a, tmp_path / "v.gguf")
    data, orig = (tmp_path / "v.gguf").read_bytes(), path.read_bytes()
    # the originals (no tensors) end right after the header; gguf-py pads to the alignment
    assert data[: len(orig)] == orig
    assert data[len(orig):] == b"\0" * (-len(orig) % 32)


def test_round_trip_smollm2(smollm2, tmp_path):
    out = tmp_path / "smol.gguf"
    with GGUFFile(smollm2) as a:
        rewrite(a, out)
        with GGUFFile(out) as b:
            assert_same(a, b)
    assert out.read_bytes() == smollm2.read_bytes()


def test_gguf_py_reads_our_output(tmp_path):
    out = tmp_path / "o.gguf"
    w = np.arange(64, dtype=np.float32).reshape(2, 32)
    write_gguf(out, {
        "general.architecture": "llama", "llama.block_count": 2, "f": 0.25,
        "toks": ["a", "b"], "big": 2**40, "flag": False,
    }, [("w", w, GGMLType.F32, (2, 32)), ("q", w, GGMLType.Q8_0, (2, 32))])
    ref = GGUFReader(out)
    assert ref.fields["llama.block_count"].contents() == 2
    assert ref.fields["llama.block_count"].types == [gguf.GGUFValueType.INT32]
    assert ref.fields["big"].types == [gguf.GGUFValueType.INT64]
    assert ref.fields["toks"].contents() == ["a", "b"]
    assert ref.fields["flag"].contents() is False
    t = {x.name: x for x in ref.tensors}
    assert np.array_equal(t["w"].data, w)
    deq = gguf.quants.dequantize(t["q"].data, gguf.GGMLQuantizationType.Q8_0)
    assert np.allclose(deq, w, atol=0.3)


def test_float_conversions(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    types = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.F64]
    out = tmp_path / "c.gguf"
    write_gguf(out, {}, [(t._name_, x, t, x.shape) for t in types] +
               [("i", np.arange(6).reshape(2, 3), GGMLType.I32, (2, 3))])
    with GGUFFile(out) as f:
        b = {n: f.tensor_bytes(n) for n in f.tensors}
        assert np.array_equal(b["F32"].view(np.float32).reshape(x.shape), x)
        assert np.array_equal(b["F16"].view(np.float16), x.astype(np.float16).reshape(-1))
        assert np.array_equal(b["F64"].view(np.float64), x.astype(np.float64).reshape(-1))
        for t in (GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q5_1):
            ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t)))
            assert b[t._name_].tobytes() == ref.tobytes(), t
        assert b["i"].view(np.int32).tolist() == list(range(6))
        assert f.metadata == {}


def test_raw_bytes_any_type(tmp_path):
    # Types gguf-py can't produce (or even name, like MXFP4) go through as raw bytes.
    raw = np.arange(2 * 17 * 2, dtype=np.uint8) % 251
    write_gguf(tmp_path / "m.gguf", {"general.architecture": "gptoss"},
               [("e", raw, GGMLType.MXFP4, (2, 64)), ("k", np.zeros(144, np.uint8), GGMLType.Q4_K, (256,))])
    with GGUFFile(tmp_path / "m.gguf") as f:
        assert f.tensors["e"].type == GGMLType.MXFP4 and f.tensors["e"].shape == (2, 64)
        assert np.array_equal(f.tensor_bytes("e"), raw)
        assert f.tensors["k"].nbytes == 144


def test_inferred_types(tmp_path):
    md = {
        "i": 1, "neg": -(2**40), "u": 2**63 + 1, "f": 1.5, "s": "x", "b": True,
        "np.u8": np.uint8(3), "np.f64": np.float64(0.1), "np.i16": np.int16(-2),
        "a.i": [1, 2], "a.big": [1, 2**35], "a.f": [1.0, 2], "a.s": ["x", "y"], "a.b": [True],
        "a.np": np.array([1, 2], dtype=np.uint16), "a.nested": [[1], ["s"]], "a.empty": [],
    }
    write_gguf(tmp_path / "t.gguf", md, [])
    with GGUFFile(tmp_path / "t.gguf") as f:
        vt, at = f.value_types, f.array_types
        assert (vt["i"], vt["neg"], vt["u"], vt["f"], vt["s"], vt["b"]) == (V.INT32, V.INT64, V.UINT64, V.FLOAT32, V.STRING, V.BOOL)
        assert (vt["np.u8"], vt["np.f64"], vt["np.i16"]) == (V.UINT8, V.FLOAT64, V.INT16)
        assert (at["a.i"], at["a.big"], at["a.f"], at["a.s"], at["a.b"], at["a.np"]) == (V.INT32, V.INT64, V.FLOAT32, V.STRING, V.BOOL, V.UINT16)
        assert at["a.nested"] == [V.INT32, V.STRING]
        assert f.metadata["a.f"] == [1.0, 2.0] and f.metadata["np.f64"] == 0.1 and f.metadata["u"] == 2**63 + 1


@pytest.mark.parametrize("md, vt, match", [
    ({"k": 256}, {"k": V.UINT8}, "256 is out of range for UINT8"),
    ({"k": -1}, {"k": V.UINT64}, "out of range for UINT64"),
    ({"k": "x"}, {"k": V.INT32}, "INT32 needs an int"),
    ({"k": 1}, {"k": V.STRING}, "STRING needs a str"),
    ({"k": [1, 300]}, {"k": V.ARRAY}, None),  # inferred INT32: fine
    ({"k": [1, "a"]}, {}, "array mixes element types"),
    ({"k": {"a": 1}}, {}, "cannot store a dict"),
    ({"general.alignment": 48}, {}, "general.alignment 48"),
    ({"": 1}, {}, "non-empty string"),
])
def test_metadata_errors(tmp_path, md, vt, match):
    if match is None:
        write_gguf(tmp_path / "ok.gguf", md, [], vt)
        return
    with pytest.raises(ValueError, match=match):
        write_gguf(tmp_path / "bad.gguf", md, [], vt)
    assert os.listdir(tmp_path) == []


def test_array_type_errors(tmp_path):
    with pytest.raises(ValueError, match="UINT8 array holds values out of range"):
        write_gguf(tmp_path / "x.gguf", {"k": [1, 256]}, [], {"k": V.ARRAY}, array_types={"k": V.UINT8})
    with pytest.raises(ValueError, match="element types don't match"):
        write_gguf(tmp_path / "x.gguf", {"k": [[1]]}, [], {"k": V.ARRAY}, array_types={"k": [V.INT32, V.INT32]})


@pytest.mark.parametrize("tensors, match", [
    ([("w", np.zeros(4, np.float32), GGMLType.F32, (4,))] * 2, "duplicate tensor name 'w'"),
    ([("w", np.zeros(10, np.uint8), GGMLType.Q4_0, (32,))], "10 raw bytes given, Q4_0\\[32\\] needs 18"),
    ([("w", np.zeros(5, np.float32), GGMLType.F32, (4,))], "5 elements given for shape \\[4\\]"),
    ([("w", np.zeros(33, np.float32), GGMLType.Q8_0, (33,))], "not a multiple of the block size"),
    ([("w", np.zeros(256, np.float32), GGMLType.Q4_K, (256,))], "cannot quantize to Q4_K here"),
    ([("w", np.array([300]), GGMLType.I8, (1,))], "out of range for I8"),
    ([("w", np.zeros(4, np.float32), GGMLType.F32, (0, 4))], "bad shape"),
    ([("w" * 64, np.zeros(4, np.float32), GGMLType.F32, (4,))], "must be 1 to 63 bytes"),
    ([("w", np.zeros(4, np.float32), 77, (4,))], "77"),
])
def test_tensor_errors(tmp_path, tensors, match):
    with pytest.raises(ValueError, match=match):
        write_gguf(tmp_path / "bad.gguf", {}, tensors)
    assert os.listdir(tmp_path) == []


def test_atomic_replace(tmp_path, monkeypatch):
    out = tmp_path / "model.gguf"
    write_gguf(out, {"general.name": "old"}, [])
    old = out.read_bytes()

    def boom(self, *args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(writer_mod._GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(out, {"general.name": "new"}, [("w", np.zeros(4, np.float32), GGMLType.F32, (4,))])
    assert out.read_bytes() == old  # untouched
    assert os.listdir(tmp_path) == ["model.gguf"]  # no temp file left behind
    monkeypatch.undo()
    write_gguf(out, {"general.name": "new"}, [])
    with GGUFFile(out) as f:
        assert f.metadata == {"general.name": "new"}
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_lazy_tensors_write_the_same_file_one_tensor_at_a_time(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {f"t{i}": rng.standard_normal((3, 64)).astype(np.float32) for i in range(4)}
    types = [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.F32]
    eager = [(n, a, t, a.shape) for (n, a), t in zip(arrays.items(), types)]
    write_gguf(tmp_path / "eager.gguf", {"general.name": "x"}, eager)

    events = []

    def lazy(name, array):
        def load():
            events.append(("load", name))
            return array

        return writer_mod.LazyTensor(load, written=lambda: events.append(("written", name)))

    tensors = [(n, lazy(n, a), t, s) for n, a, t, s in eager]
    write_gguf(tmp_path / "lazy.gguf", {"general.name": "x"}, tensors)
    assert (tmp_path / "lazy.gguf").read_bytes() == (tmp_path / "eager.gguf").read_bytes()
    # Each tensor is made only after the previous one is in the file.
    assert events == [(e, n) for n in arrays for e in ("load", "written")]


def test_lazy_tensors_hold_one_tensor_in_memory(tmp_path):
    import tracemalloc

    rows, cols, count = 256, 4096, 24  # 4 MiB of float32 each, 96 MiB in all
    one = rows * cols * 4

    def make(i):
        return writer_mod.LazyTensor(lambda: np.full((rows, cols), i, dtype=np.float32))

    tensors = [(f"w{i}", make(i), GGMLType.F32, (rows, cols)) for i in range(count)]
    tracemalloc.start()
    try:
        write_gguf(tmp_path / "big.gguf", {}, tensors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # An in-memory writer would peak at the whole output (count * one); this one at a tensor or two.
    assert peak < 3 * one, f"peak {peak / 2**20:.1f} MiB for {one / 2**20:.0f} MiB tensors"
    with GGUFFile(tmp_path / "big.gguf") as f:
        assert f.tensor_bytes("w23").view(np.float32)[-1] == 23


def test_a_failing_lazy_tensor_leaves_nothing(tmp_path):
    out = tmp_path / "model.gguf"
    write_gguf(out, {"general.name": "old"}, [])
    old = out.read_bytes()

    def fail():
        raise ValueError("tensor 'b': source is truncated")

    tensors = [("a", np.zeros(4, np.float32), GGMLType.F32, (4,)),
               ("b", writer_mod.LazyTensor(fail), GGMLType.F32, (4,))]
    with pytest.raises(ValueError, match="truncated"):
        write_gguf(out, {"general.name": "new"}, tensors)
    # A lazy tensor's data is still checked against its declared type and shape.
    with pytest.raises(ValueError, match="5 elements given for shape \\[4\\]"):
        write_gguf(out, {}, [("c", writer_mod.LazyTensor(lambda: np.zeros(5, np.float32)), GGMLType.F32, (4,))])
    assert out.read_bytes() == old and os.listdir(tmp_path) == ["model.gguf"]
