"""Benchmark (not a test): prefill and decode tokens/s and peak RSS for a GGUF model,
beside llama.cpp's figures on the same file and thread count when llama-cpp-python is installed.

    .venv/bin/python bench/bench.py smollm2 --threads 2
    .venv/bin/python bench/bench.py path/to/model.gguf --prompt-tokens 512 --gen-tokens 128 --repeat 5

Each measurement runs in a fresh process (so peak RSS is that side's alone), the two sides
alternate (so both see the same machine load), and medians are reported. Both sides get the
same prompt token ids and decode greedily for a fixed number of tokens, ignoring EOS.

For a fair comparison, llama-cpp-python must be built as setup.sh builds pollama's ggml (the
CPU's native features, no AMX code), and never into pip's cache:
    CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="$CFLAGS" \
    .venv/bin/pip install --no-cache-dir llama-cpp-python==0.3.36
bench_served.py compares the served path against llama.cpp's own tools instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def prompt_ids(model_path: str, n: int) -> list[int]:
    """n token ids of ordinary English text, from the model's own tokenizer."""
    from pollama.fs.gguf import GGUFFile
    from pollama.tokenizer import load_tokenizer

    with GGUFFile(model_path) as gguf:
        tok = load_tokenizer(gguf.metadata)
    text = (
        "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
        "single step. Knowledge is power, and the pen is mightier than the sword. "
    )
    ids = tok.encode(text * (1 + n // 20), add_special=False, parse_special=False)
    return ids[:n]


def run_pollama(model: str, ids: list[int], gen: int, threads: int) -> dict:
    import numpy as np

    from pollama.debug.steps import StepEngine

    t0 = time.perf_counter()
    engine = StepEngine(model, num_ctx=len(ids) + gen + 16, num_batch=512, num_thread=threads)
    load = time.perf_counter() - t0
    engine.prefill(ids[:16])  # warm up: page in weights, size the allocator
    engine.reset()
    t0 = time.perf_counter()
    logits, _ = engine.prefill(ids)
    prefill = time.perf_counter() - t0
    token = int(np.argmax(logits))
    t0 = time.perf_counter()
    for _ in range(gen):
        token = int(np.argmax(engine.decode(token)))
    decode = time.perf_counter() - t0
    return {"load_s": load, "prefill_tps": len(ids) / prefill, "decode_tps": gen / decode}


def run_llamacpp(model: str, ids: list[int], gen: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model, n_ctx=len(ids) + gen + 16, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - t0
    llm.eval(ids[:16])  # warm up, as on our side
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    def last_logits() -> np.ndarray:
        # Without logits_all, llama-cpp-python keeps no scores: read the context's last row.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    token = int(np.argmax(last_logits()))
    t0 = time.perf_counter()
    for _ in range(gen):
        llm.eval([token])
        token = int(np.argmax(last_logits()))
    decode = time.perf_counter() - t0
    return {"load_s": load, "prefill_tps": len(ids) / prefill, "decode_tps": gen / decode}


def child(args: argparse.Namespace) -> None:
    ids = json.loads(sys.stdin.read())
    runner = run_pollama if args.side == "pollama" else run_llamacpp
    result = runner(args.model, ids, args.gen_tokens, args.threads)
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's over exec).
    result["peak_rss_mib"] = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    print(json.dumps(result))


def have_llamacpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="GGUF path or embedded model name (smollm2, gemma3-270m, qwen2.5-coder-0.5b)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-llamacpp", action="store_true", help="measure pollama only")
    parser.add_argument("--side", choices=["pollama", "llamacpp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    from pollama.cli.main import resolve_model

    model = str(resolve_model(args.model))
    ids = prompt_ids(model, args.prompt_tokens)
    sides = ["pollama"] + (["llamacpp"] if have_llamacpp() and not args.no_llamacpp else [])
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.repeat):
        for side in sides:
            cmd = [sys.executable, __file__, model, "--side", side, "--threads", str(args.threads),
                   "--gen-tokens", str(args.gen_tokens)]
            out = subprocess.run(cmd, input=json.dumps(ids), capture_output=True, text=True, check=True)
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))

    import os

    size_mib = os.path.getsize(model) / 2**20
    print(f"model {args.model} ({size_mib:.0f} MiB), {args.threads} threads, prompt {len(ids)} tokens, "
          f"decode {args.gen_tokens} tokens, median of {args.repeat}")
    print(f"{'':10} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MiB':>13} {'load s':>7}")
    for side, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{side:10} {med['prefill_tps']:14.1f} {med['decode_tps']:13.1f} {med['peak_rss_mib']:13.0f} {med['load_s']:7.2f}")
    if "llamacpp" not in results:
        print("(llama.cpp not measured: llama-cpp-python is not installed)")


if __name__ == "__main__":
    main()
