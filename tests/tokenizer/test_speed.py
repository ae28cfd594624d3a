"""Speed: a large vocabulary loads in well under a second and a 2,000-token prompt encodes in well
under 0.5 s on a fresh tokenizer (no cached words).

Each figure is the best of a few runs, so that a busy machine does not fail the test; the bounds
have ample margin (on a 2-core machine: about 0.3 s to load 262k tokens, under 0.1 s to encode
2,700 tokens).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pollama.tokenizer import load_tokenizer

PROMPT = (Path(__file__).read_text() + Path(__file__).with_name("test_algorithms.py").read_text()) * 3


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "llama-spm", "bert-bge", "gemma3-270m"])
def test_load_and_first_encode_are_fast(metadata_of, name):
    md = metadata_of(name)
    load = encode = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        tok = load_tokenizer(md)
        t1 = time.perf_counter()
        ids = tok.encode(PROMPT)
        t2 = time.perf_counter()
        load, encode = min(load, t1 - t0), min(encode, t2 - t1)
    assert len(ids) >= 2000
    assert load < 1.0, f"{name}: loading took {load:.2f} s"
    assert encode < 0.5, f"{name}: encoding {len(ids)} tokens took {encode:.2f} s"
