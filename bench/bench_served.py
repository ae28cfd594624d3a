"""Benchmark (not a test): the served path against llama.cpp's own tools, side by side.

    .venv/bin/python bench/bench_served.py single smollm2 [--repeat 3]
    .venv/bin/python bench/bench_served.py parallel smollm2 [--clients 8 --tokens 64]

`single`: prefill and decode tokens/s through a real `pollama serve` (/api/generate, raw
prompts: one of 512 tokens, then 128 tokens decoded after a short one, as llama-bench's pp512
and tg128; the rates are the responses' own prompt_eval and eval counts and durations, as
`ollama run --verbose` shows them) beside llama-bench's pp512 and tg128 on the same GGUF file
and thread count (its defaults otherwise: flash attention auto, f16 K/V).

`parallel`: N clients at once, streamed, greedy, --tokens each, short different prompts that
every model continues, given as they are: through /api/generate with "raw": true to `pollama
serve` with OLLAMA_NUM_PARALLEL=N, through /v1/completions to `llama-server -np N` (the context
N x 2048 on both; see stream_completion for why not /v1/completions on both): the aggregate completion tokens/s over
the wall time, and the time to first token of a new request sent while the other N-1 decode.

llama.cpp's tools are found in $LLAMACPP_TOOLS (a directory; ../shared/tools/
build_llamacpp_tools.sh builds them natively, no AMX) or on PATH. The two sides alternate,
each run in a fresh server, so both see the same machine; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

THREADS_DEFAULT = 2
# Counts, which every model continues past the tokens asked for on both sides (a question
# may end at once on one side and not the other, and then the two do different work).
PROMPTS = [f"{n}, {n + 1}, {n + 2}, {n + 3}," for n in range(100, 1700, 200)]


def llamacpp_tool(name: str) -> str | None:
    directory = os.environ.get("LLAMACPP_TOOLS")
    if directory and (Path(directory) / name).is_file():
        return str(Path(directory) / name)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


class Server:
    """A pollama serve or llama-server process on a free port, stopped on exit."""

    def __init__(self, side: str, model: str, threads: int, parallel: int = 1, ctx: int = 2048):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if side == "pollama":
            self.home = tempfile.mkdtemp(prefix="bench-served-")
            env.update(OLLAMA_HOST=f"127.0.0.1:{self.port}", OLLAMA_MODELS=self.home, OLLAMA_NUM_PARALLEL=str(parallel),
                       OLLAMA_CONTEXT_LENGTH=str(ctx),
                       OLLAMA_KEEP_ALIVE="10m", POLLAMA_CACHE=env.get("POLLAMA_CACHE", ""))
            if not env["POLLAMA_CACHE"]:
                del env["POLLAMA_CACHE"]
            cmd = [sys.executable, "-m", "pollama.cli.main", "serve"]
            self.health = self.base + "/api/version"
        else:
            self.home = None
            cmd = [llamacpp_tool("llama-server"), "-m", model, "-t", str(threads), "-tb", str(threads),
                   "--host", "127.0.0.1", "--port", str(self.port), "-np", str(parallel), "-c", str(ctx * parallel),
                   "--no-webui", "-lv", "0"]
            self.health = self.base + "/health"
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until_up(self.health, self.proc)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_sides(sides: dict[str, list[dict]], describe) -> None:
    """A line per side: describe(its runs), or why it has none."""
    for side, runs in sides.items():
        print(f"{side:13} {describe(runs) if runs else '(not on PATH or in $LLAMACPP_TOOLS)'}")


# -- single stream ------------------------------------------------------------------------
def prompt_of(model_path: str, n: int, salt: int) -> str:
    """Text of exactly n tokens (the model's own tokenizer), different for each salt so that
    no run reuses a cached prefix."""
    from pollama.fs.gguf import GGUFFile
    from pollama.tokenizer import load_tokenizer

    with GGUFFile(model_path) as gguf:
        tok = load_tokenizer(gguf.metadata)
    text = (
        f"Note {salt}. The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins "
        "with a single step. Knowledge is power, and the pen is mightier than the sword. "
    )
    ids = tok.encode(text * (1 + n // 20), add_special=False, parse_special=False)[:n]
    return tok.decode(ids)


def pollama_single(model: str, name: str, threads: int, salt: int) -> dict:
    """pp512 and tg128 as llama-bench measures them, through the server: a 512-token prompt
    (one token generated), then 128 tokens decoded after a short prompt (a count, which a
    model continues rather than ending)."""
    options = {"num_thread": threads, "num_ctx": 2048, "num_batch": 512, "temperature": 0}
    with Server("pollama", model, threads) as server:
        client = httpx.Client(base_url=server.base, timeout=600)

        def generate(prompt: str, num_predict: int) -> dict:
            reply = client.post("/api/generate", json={
                "model": name, "prompt": prompt, "raw": True, "stream": False,
                "options": {**options, "num_predict": num_predict},
            })
            reply.raise_for_status()
            return reply.json()

        generate("Hello", 2)  # load the model, page in its weights
        prefill = generate(prompt_of(model, 512, salt), 1)
        decode = generate(f"{salt}, {salt + 1}, {salt + 2}, {salt + 3},", 128)
    return {
        "prefill": prefill["prompt_eval_count"] / prefill["prompt_eval_duration"] * 1e9,
        "decode": decode["eval_count"] / decode["eval_duration"] * 1e9,
        "prompt_tokens": prefill["prompt_eval_count"], "decoded": decode["eval_count"],
    }


def llama_bench(model: str, threads: int) -> dict:
    out = subprocess.run([llamacpp_tool("llama-bench"), "-m", model, "-t", str(threads), "-p", "512", "-n", "128",
                          "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    result = {}
    for row in rows:
        key = "prefill" if row["n_prompt"] else "decode"
        result[key] = row["avg_ts"]
        result["build"] = f"{row.get('build_commit', '?')} ({row.get('cpu_info', '?')}, flash_attn={row.get('flash_attn')})"
    return result


def single(args, model: str) -> None:
    sides = {"pollama": [], "llama-bench": []}
    for i in range(args.repeat):
        sides["pollama"].append(pollama_single(model, args.model, args.threads, i))
        if llamacpp_tool("llama-bench"):
            sides["llama-bench"].append(llama_bench(model, args.threads))
    print(f"{args.model}: {args.threads} threads, pp512 / tg128, median of {args.repeat}")
    print_sides(sides, lambda runs: f"prefill {median(runs, 'prefill'):7.1f} tok/s   decode {median(runs, 'decode'):6.1f} tok/s"
                                    f"   {runs[0].get('build', '')}")
    if sides["llama-bench"]:
        ratio = lambda k: median(sides["pollama"], k) / median(sides["llama-bench"], k)
        print(f"{'ratio':12} prefill {ratio('prefill'):7.2f}x        decode {ratio('decode'):6.2f}x")


# -- concurrent clients -------------------------------------------------------------------
def stream_completion(base: str, model: str, prompt: str, tokens: int, raw_generate: bool = False) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the end, completion tokens) of one streamed request.

    The same text must reach both models as the same tokens: llama-server's /v1/completions
    takes the prompt as it is, while Ollama's (and so pollama's) wraps it in the model's chat
    template (SmolLM2's adds a 30-token system prompt, and the model then answers as a chat,
    often ending early). So pollama gets the text through /api/generate with "raw": true,
    Ollama's own way to send text as it is."""
    if raw_generate:
        url, body = "/api/generate", {"model": model, "prompt": prompt, "raw": True, "stream": True,
                                      "options": {"num_predict": tokens, "temperature": 0}}
    else:
        url, body = "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
                                        "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    count = 0
    with httpx.stream("POST", base + url, json=body, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if raw_generate:
                if not line:
                    continue
                chunk = json.loads(line)
                if chunk.get("response") and first is None:
                    first = time.perf_counter() - start
                if chunk.get("done"):
                    count = chunk["eval_count"]
                continue
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                if first is None:
                    first = time.perf_counter() - start
                count += 1
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            if chunk.get("timings"):  # llama-server's own count
                count = chunk["timings"].get("predicted_n", count)
    return first or 0.0, time.perf_counter() - start, count


def all_at_once(base: str, name: str, clients: int, tokens: int, salt: str = "", raw: bool = False) -> float:
    """Completion tokens per second of wall time for `clients` requests sent together."""
    results: list = [None] * clients
    started = threading.Barrier(clients)

    def client(i: int) -> None:
        started.wait()
        results[i] = stream_completion(base, name, salt + PROMPTS[i % len(PROMPTS)], tokens, raw)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r[2] for r in results) / (time.perf_counter() - t0)


def concurrent_run(base: str, name: str, clients: int, tokens: int, raw: bool = False) -> dict:
    # Steady state: an untimed round first (weights paged in; pollama builds its step graphs
    # for these batch shapes once, llama-server fills its slots), with other prompts.
    all_at_once(base, name, clients, 8, salt="0", raw=raw)
    aggregate = all_at_once(base, name, clients, tokens, raw=raw)

    # Time to first token of a new request while the others decode.
    others = [threading.Thread(target=stream_completion, args=(base, name, " " + PROMPTS[i % len(PROMPTS)], tokens, raw))
              for i in range(clients - 1)]
    for t in others:
        t.start()
    time.sleep(1.0)  # they are decoding by now
    ttft, _, _ = stream_completion(base, name, "7, 8, 9, 10,", 8, raw)
    for t in others:
        t.join()
    return {"aggregate": aggregate, "ttft": ttft}


def parallel(args, model: str) -> None:
    sides = {"pollama": [], "llama-server": []}
    for _ in range(args.repeat):
        with Server("pollama", model, args.threads, parallel=args.clients) as server:
            sides["pollama"].append(concurrent_run(server.base, args.model, args.clients, args.tokens, raw=True))
        if llamacpp_tool("llama-server"):
            with Server("llama-server", model, args.threads, parallel=args.clients) as server:
                sides["llama-server"].append(concurrent_run(server.base, args.model, args.clients, args.tokens))
    print(f"{args.model}: {args.clients} clients x {args.tokens} tokens (pollama /api/generate raw, llama-server /v1/completions: the same text), {args.threads} threads, median of {args.repeat}")
    print_sides(sides, lambda runs: f"aggregate {median(runs, 'aggregate'):6.1f} tok/s   first token while "
                                    f"{args.clients - 1} decode {median(runs, 'ttft') * 1000:6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["single", "parallel"])
    parser.add_argument("model", help="an embedded model name (smollm2, gemma3-270m, qwen2.5-coder-0.5b) or a GGUF path")
    parser.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from pollama.cli.main import resolve_model

    model = str(resolve_model(args.model))
    (single if args.mode == "single" else parallel)(args, model)


if __name__ == "__main__":
    main()
