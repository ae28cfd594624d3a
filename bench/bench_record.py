"""Benchmark (not a test): debug recording costs nothing while it is off.

    .venv/bin/python bench/bench_record.py [--rounds 7]

Runs SmolLM2 (the embedded model) two ways, interleaved, and reports medians:
- "absent": Llama.forward rebuilt from its own source with every `ctx.record(...)` line
  removed, i.e. the model as it was before the feature;
- "off":    the model as shipped, recording off (no OLLAMA_DEBUG): each record call is one
  attribute test, and the graph is the same (tests/debug/test_record.py checks that).
and, for scale, "on": a recorder set (every recorded tensor's last row is an extra output).

Measured: graph build (Python only), a 64-token prefill and 32 decode steps (two threads).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import textwrap
import time
import timeit

from pollama.ml.base import Recorder
from pollama.ml.ggml.backend import GGMLBackend
from pollama.models.llama import model as llama_module
from pollama.nn import Batch
from pollama.debug.steps import StepEngine
from pollama.store.embedded import embedded_model_path

PROMPT = list(range(100, 164))
DECODE_STEPS = 32


def forward_without_records():
    """Llama.forward compiled from its source minus the ctx.record lines (the feature absent)."""
    source = textwrap.dedent(inspect.getsource(llama_module.Llama.forward))
    kept = "\n".join(line for line in source.splitlines() if "ctx.record(" not in line)
    namespace: dict = {}
    exec(compile(kept, "<forward without records>", "exec"), vars(llama_module), namespace)  # noqa: S102 (our own source)
    return namespace["forward"]


def build_seconds(engine: StepEngine) -> float:
    """Time to build one prefill graph in Python (no compute)."""
    batch = Batch.single(PROMPT, 0)
    plans = engine.cache.plan(batch)
    try:
        with engine.backend.context() as ctx:
            start = time.perf_counter()
            engine.cache.bind(ctx, plans)
            engine.model.forward(ctx, batch, engine.cache)
            return time.perf_counter() - start
    finally:
        engine.cache.remove(0, 0)


def run_seconds(engine: StepEngine) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) from an empty cache; the graph cache cleared."""
    for ctx in engine.graphs.values():
        ctx.close()
    engine.graphs.clear()
    engine.reset()
    start = time.perf_counter()
    logits, _ = engine.prefill(PROMPT)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    token = int(logits.argmax())
    for _ in range(DECODE_STEPS):
        token = int(engine.decode(token).argmax())
    return prefill, (time.perf_counter() - start) / DECODE_STEPS


def record_calls_seconds(n_layers: int, repeat: int = 2000) -> float:
    """The record() calls of one forward pass with recording off, alone: formatting and one test each."""
    backend = GGMLBackend(n_threads=1)
    with backend.context() as ctx:
        x = object()  # never looked at while recording is off

        def calls():
            ctx.record("token_embd", x)
            for i in range(n_layers):
                ctx.record(f"blk.{i}.attn_out", x)
                ctx.record(f"blk.{i}.ffn_out", x)
                ctx.record(f"blk.{i}.out", x)
            ctx.record("output_norm", x)
            ctx.record("logits", x)

        seconds = min(timeit.repeat(calls, number=repeat, repeat=5)) / repeat
    backend.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    shipped, absent = llama_module.Llama.forward, forward_without_records()
    results: dict[str, list[tuple[float, float, float]]] = {"absent": [], "off": [], "on": []}
    with StepEngine(embedded_model_path("smollm2"), num_ctx=256, num_thread=2) as engine:
        assert engine.backend.recorder is None, "unset OLLAMA_DEBUG to benchmark"
        for _ in range(args.rounds):
            for variant in list(results):  # interleaved, so drift in machine load hits all three
                llama_module.Llama.forward = absent if variant == "absent" else shipped
                engine.backend.recorder = Recorder() if variant == "on" else None
                builds = [build_seconds(engine) for _ in range(5)]
                results[variant].append((min(builds), *run_seconds(engine)))
        llama_module.Llama.forward = shipped
        engine.backend.recorder = None
    print(f"SmolLM2 Q4_1, {len(PROMPT)}-token prefill, {DECODE_STEPS} decode steps, {args.rounds} rounds: median (min)")
    print(f"{'':8} {'graph build ms':>18} {'prefill ms':>18} {'decode ms/tok':>18}")
    for variant, rows in results.items():
        cells = [f"{statistics.median(col) * 1e3:.2f} ({min(col) * 1e3:.2f})" for col in zip(*rows)]
        print(f"{variant:8} " + " ".join(f"{cell:>18}" for cell in cells))
    # Decode steps rerun a kept graph, so they do not even run forward(): the calls cost nothing there.
    print(f"record() calls of one forward pass (30 layers), recording off: {record_calls_seconds(30) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
