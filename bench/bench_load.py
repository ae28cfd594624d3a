"""Benchmark (not a test): how fast metadata parses and tokenizers load and encode.

    .venv/bin/python bench/bench_load.py

Targets: a 262k-token vocabulary parses in under 0.5 s; a tokenizer loads in under 1 s and
encodes a 2,000-token prompt in under 0.5 s on a fresh instance (no cached words).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf
from pollama.tokenizer import load_tokenizer

VOCAB = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "vocab"
PROMPT = Path(__file__).read_text() * 12


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_metadata() -> None:
    rng = random.Random(1)
    n = 262144
    tokens = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz▁ÄéΩ中文", k=rng.randint(1, 10))) + str(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_gguf(path, {"general.architecture": "x", "tokenizer.ggml.tokens": tokens,
                          "tokenizer.ggml.scores": np.arange(n, dtype=np.float32),
                          "tokenizer.ggml.token_type": np.ones(n, dtype=np.int32)}, [])

        def parse():
            with GGUFFile(path) as f:
                f.metadata["tokenizer.ggml.tokens"]

        print(f"GGUF metadata, 262,144-token vocabulary: {best_of(3, parse) * 1e3:.0f} ms (best of 3)")


def bench_tokenizers() -> None:
    files = {p.name.removeprefix("ggml-vocab-").removesuffix(".gguf"): p for p in sorted(VOCAB.glob("*.gguf"))}
    try:
        from pollama.store.embedded import embedded_model_path

        files["gemma3-270m"] = embedded_model_path("gemma3-270m")
    except (FileNotFoundError, KeyError):
        pass
    print(f"{'vocabulary':16} {'load ms':>8} {'encode ms':>10} {'tokens':>7}")
    for name, path in files.items():
        with GGUFFile(path) as f:
            metadata = dict(f.metadata)
        load = best_of(3, lambda: load_tokenizer(metadata))
        encode = best_of(3, lambda: load_tokenizer(metadata).encode(PROMPT)) - load
        n = len(load_tokenizer(metadata).encode(PROMPT))
        print(f"{name:16} {load * 1e3:8.0f} {max(encode, 0) * 1e3:10.0f} {n:7}")


if __name__ == "__main__":
    bench_metadata()
    bench_tokenizers()
