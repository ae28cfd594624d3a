"""Benchmark (not a test): milliseconds per sample() call at real vocabulary sizes.

    .venv/bin/python bench/bench_sampler.py
"""

from __future__ import annotations

import time

import numpy as np

from pollama.sample import Sampler, SamplerOptions

CASES = {
    "defaults": SamplerOptions(seed=1),
    "greedy": SamplerOptions(temperature=0.0),
    "top_k=0 top_p=0.9": SamplerOptions(top_k=0, top_p=0.9, seed=1),
    "top_k=0 typical_p=0.5": SamplerOptions(top_k=0, typical_p=0.5, seed=1),
}


def median_ms(sampler: Sampler, logits: np.ndarray, history: list[int], calls: int = 50) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        sampler.sample(logits, history)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'options':24} {'150k vocab':>11} {'262k vocab':>11}   (median ms per call)")
    for name, options in CASES.items():
        row = []
        for vocab in (150_000, 262_144):
            logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
            history = rng.integers(0, vocab, 500).tolist()
            row.append(median_ms(Sampler(options, vocab), logits, history))
        print(f"{name:24} {row[0]:11.2f} {row[1]:11.2f}")


if __name__ == "__main__":
    main()
