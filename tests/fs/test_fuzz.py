"""Property: any mutation of a real GGUF header either parses or raises GGUFError.

The bases are small so each example parses in about a millisecond: a file rebuilt from
the real bert-bge vocabulary's metadata (arrays cut short, plus every value type and a
few tensors), the real file's first 6 KB as-is, and a hand-crafted file.
"""

from __future__ import annotations

import itertools
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFError, GGUFFile
from pollama.fs.writer import write_gguf
from tests.fs.conftest import VOCAB_DIR, SMALL_VOCAB, good_build

EXAMPLES = 2000
PREFIX = 6 * 1024


def int_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every integer field in the header, found by walking it.

    Independent of the reader under test; stops quietly where `data` ends.
    """
    fields: list[tuple[int, int]] = [(4, 4), (8, 8), (16, 8)]
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def u(n: int) -> int:
        nonlocal pos
        if pos + n > len(data):
            raise EOFError
        fields.append((pos, n))
        v = int.from_bytes(data[pos:pos + n], "little")
        pos += n
        return v

    def string() -> None:
        nonlocal pos
        n = u(8)  # not `pos += u(8)`: that reads pos before u() moves it
        pos += n

    def val(t: int) -> None:
        nonlocal pos
        if t in sizes:
            pos += sizes[t]
        elif t == 8:
            string()
        elif t == 9:
            et, n = u(4), u(8)
            for _ in range(min(n, 64)):  # the first elements are enough to aim at
                val(et)
            if n > 64:
                raise EOFError
        else:
            raise EOFError

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    try:
        for _ in range(n_kv):
            string()
            val(u(4))
        for _ in range(n_tensors):
            string()
            for _ in range(u(4)):
                u(8)
            u(4)
            u(8)
    except EOFError:
        pass
    return [f for f in fields if f[0] + f[1] <= len(data)]


def derived_file(vocab: Path, out: Path) -> bytes:
    """A small, valid GGUF with the real file's keys, every value type and some tensors."""
    with GGUFFile(vocab) as f:
        md = {k: (v[:48] if isinstance(v, list) else v) for k, v in f.metadata.items()}
        vt, at = dict(f.value_types), dict(f.array_types)
    md.update({"x.u8": np.uint8(7), "x.i64": np.int64(-9), "x.f64": np.float64(2.5), "x.b": True,
               "x.nested": [[1, 2], ["a"], []], "x.bools": [True, False]})
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    write_gguf(out, md, [
        ("token_embd.weight", w, GGMLType.Q8_0, w.shape),
        ("blk.0.attn_q.weight", w, GGMLType.Q4_0, w.shape),
        ("output_norm.weight", w[0], GGMLType.F32, (64,)),
        ("blk.0.ffn_up.weight", w, GGMLType.F16, w.shape),
    ], vt, array_types=at)
    return out.read_bytes()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> _Bases:
    out = []
    crafted = good_build().bytes()
    out.append(crafted)
    vocab = VOCAB_DIR / SMALL_VOCAB
    if vocab.is_file():
        out.append(derived_file(vocab, tmp_path_factory.mktemp("fuzzbase") / "derived.gguf"))
        out.append(vocab.read_bytes()[:PREFIX])
    else:
        print(f"{vocab} absent: fuzzing the hand-crafted base only")
    return _Bases((b, int_fields(b)) for b in out)


class _Bases(list):
    # keeps hypothesis' failure report short: it prints every argument's repr
    def __repr__(self) -> str:
        return f"<{len(self)} fuzz bases of {[len(b) for b, _ in self]} bytes>"


EDGE = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 32, 33, 63, 64, 65, 255, 256, 0xFFFF, 0x10000,
        2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
ANY = st.integers(0, 2**20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), ANY, st.integers(1, 255)),
    st.tuples(st.just("set"), ANY, st.integers(0, 255)),
    st.tuples(st.just("insert"), ANY, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), ANY, st.integers(1, 32)),
    st.tuples(st.just("field"), ANY, st.one_of(st.sampled_from(EDGE), st.integers(0, 2**64 - 1),
                                                st.sampled_from(["size", "size-1", "size+1", "half"]))),
    st.tuples(st.just("truncate"), ANY),
)


def mutate(data: bytes, fields: list[tuple[int, int]], mutations) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        kind, where = m[0], m[1]
        n = max(len(buf), 1)
        if kind == "flip" and buf:
            buf[where % n] ^= m[2]
        elif kind == "set" and buf:
            buf[where % n] = m[2]
        elif kind == "insert":
            buf[where % (len(buf) + 1):where % (len(buf) + 1)] = m[2]
        elif kind == "delete" and buf:
            del buf[where % n:where % n + m[2]]
        elif kind == "field" and fields:
            off, size = fields[where % len(fields)]
            v = m[2]
            if isinstance(v, str):
                v = {"size": len(buf), "size-1": len(buf) - 1, "size+1": len(buf) + 1, "half": len(buf) // 2}[v]
            if off + size <= len(buf):
                buf[off:off + size] = (v % (1 << (8 * size))).to_bytes(size, "little")
        elif kind == "truncate":
            del buf[where % (len(buf) + 1):]
    return bytes(buf)


def check_parse(path: Path) -> None:
    """The property: GGUFError, or a file whose every invariant holds."""
    try:
        f = GGUFFile(path)
    except GGUFError as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg
        return
    with f:
        assert f.version in (2, 3)
        assert f.alignment > 0 and f.alignment & (f.alignment - 1) == 0
        assert f.data_offset % f.alignment == 0
        end = 0
        for t in sorted(f.tensors.values(), key=lambda t: t.offset):
            assert t.offset >= max(end, f.data_offset) and t.offset % f.alignment == 0
            assert 1 <= len(t.shape) <= 4 and all(d > 0 for d in t.shape)
            end = t.offset + t.nbytes
            assert end <= f.size
            assert f.tensor_bytes(t.name).size == t.nbytes
        assert set(f.metadata) == set(f.value_types)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("a single parse took over 10 s")


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(base=st.integers(0, 2), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_headers_parse_or_raise_gguf_error(bases, tmp_path_factory, base, mutations):
    data, fields = bases[base % len(bases)]
    path = _scratch(tmp_path_factory) / f"m{next(_counter)}.gguf"
    path.write_bytes(mutate(data, fields, mutations))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        check_parse(path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        path.unlink()


_counter = itertools.count()
_scratch_dir: list[Path] = []


def _scratch(factory) -> Path:
    if not _scratch_dir:
        _scratch_dir.append(factory.mktemp("fuzz"))
    return _scratch_dir[0]


def test_bases_are_valid(bases):
    for data, fields in bases[:2]:
        assert len(fields) > 20
    # the mutation targets really are integer fields: setting them all to their own value is a no-op
    for data, fields in bases:
        assert mutate(data, fields, [("field", i, int.from_bytes(data[o:o + s], "little"))
                                     for i, (o, s) in enumerate(fields[:50])]) == data


def test_atheris_harness_without_atheris(small_vocab, tmp_path):
    """bench/fuzz_gguf.py seeds a corpus its own check accepts, and explains a missing atheris."""
    import importlib.util
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "fuzz_gguf.py"
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(script), "--seed-corpus", str(corpus), str(small_vocab)],
                   check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("fuzz_gguf", script)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    seeds = sorted(corpus.iterdir())
    assert len(seeds) == 2
    for seed in seeds:
        harness.check(str(seed))
    with GGUFFile(corpus / "ggml-vocab-bert-bge.small.gguf") as f:
        assert len(f.tensors) == 2 and len(f.metadata["tokenizer.ggml.tokens"]) == 32
    if importlib.util.find_spec("atheris") is None:
        r = subprocess.run([sys.executable, str(script), str(corpus)], capture_output=True, text=True)
        assert r.returncode != 0 and "pip install atheris" in r.stderr
