"""Coverage-guided fuzzing of the GGUF reader with atheris, for runs of hours.

Property (same as tests/fs/test_fuzz.py): any input either parses into a file whose
invariants hold, or raises GGUFError with a one-line message. Any other exception, a
crash, a hang (-timeout) or a large allocation (-rss_limit_mb) is a finding.

atheris is not a pollama dependency; install it into the venv only to fuzz:

    .venv/bin/pip install atheris          # wheels for CPython 3.11 on x86-64 Linux

Then seed a corpus from real files and run:

    .venv/bin/python bench/fuzz_gguf.py --seed-corpus fuzz-corpus \
        [../shared/testdata/vocab/*.gguf ...]
    .venv/bin/python bench/fuzz_gguf.py fuzz-corpus -timeout=10 -rss_limit_mb=1024 \
        -max_len=16384 -max_total_time=14400

Seeds are each file's first 16 KB and, for vocabularies, a small valid rebuild with
arrays cut short (so the fuzzer can reach tensor infos). Findings are written by
libFuzzer as crash-* files; replay one with `bench/fuzz_gguf.py crash-...`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pollama.fs.gguf import GGUFError, GGUFFile  # noqa: E402

SEED_PREFIX = 16 * 1024


def check(path: str) -> None:
    """Parse `path`; raise AssertionError if the reader breaks its contract."""
    try:
        f = GGUFFile(path)
    except GGUFError as e:
        msg = str(e)
        if "\n" in msg or not msg.startswith(path + ": "):
            raise AssertionError(f"badly formed error message: {msg!r}") from e
        return
    with f:
        assert f.version in (2, 3)
        assert f.alignment > 0 and f.alignment & (f.alignment - 1) == 0
        end = f.data_offset
        for t in sorted(f.tensors.values(), key=lambda t: t.offset):
            assert t.offset >= end and t.offset % f.alignment == 0, t
            end = t.offset + t.nbytes
            assert end <= f.size, t
            assert f.tensor_bytes(t.name).size == t.nbytes


def seed_corpus(out_dir: Path, sources: list[Path]) -> None:
    """Write seeds derived from real GGUF files into `out_dir`."""
    import numpy as np

    from pollama.fs.ggml_types import GGMLType
    from pollama.fs.writer import write_gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        (out_dir / f"{src.stem}.prefix").write_bytes(src.read_bytes()[:SEED_PREFIX])
        with GGUFFile(src) as f:
            md = {k: (v[:32] if isinstance(v, list) else v) for k, v in f.metadata.items()}
            vt, at = dict(f.value_types), dict(f.array_types)
        w = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64)
        write_gguf(out_dir / f"{src.stem}.small.gguf", md, [
            ("token_embd.weight", w, GGMLType.Q8_0, w.shape),
            ("output_norm.weight", w[0], GGMLType.F32, (64,)),
        ], vt, array_types=at)
    print(f"wrote {2 * len(sources)} seeds to {out_dir}")


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--seed-corpus":
        default = sorted((Path(__file__).resolve().parents[2] / "shared/testdata/vocab").glob("*.gguf"))
        seed_corpus(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]] or default)
        return
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris (see this file's docstring)")

    # The reader takes a path (it memory-maps); a file in RAM keeps that cheap.
    scratch = tempfile.NamedTemporaryFile(
        prefix="fuzz-gguf-", suffix=".gguf", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    path = scratch.name

    def one_input(data: bytes) -> None:
        # Rewrite in place: the previous GGUFFile is closed and its views are gone.
        with open(path, "wb") as fh:
            fh.write(data)
        check(path)

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
