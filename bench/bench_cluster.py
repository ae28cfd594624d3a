"""Benchmark (not a test): pollama as a Ray Serve application against one `pollama serve`.

    .venv/bin/python bench/bench_cluster.py smollm2 [--clients 8 --rounds 4 --tokens 64 --latency 20]

Three sides on this machine, each a fresh server, the same model and the same clients:
`single` (`pollama serve`, OLLAMA_NUM_PARALLEL = clients), `ray-1` and `ray-2` (`pollama serve
--ray --config FILE`: one or two replicas with `clients` slots each; the machine's CPUs split
between the replicas, as Ray reserves them, and each replica's runner uses that many threads).

- Throughput: `clients` streaming clients at once, each sending `rounds` requests one after
  another (/api/generate, raw, greedy, `tokens` tokens each, counting prompts every model
  continues): requests/s and completion tokens/s over the wall time. An untimed round first
  loads the runners (and, with 2 replicas, usually both).
- Added latency: `latency` one-token streamed requests, one at a time (nothing else running),
  time to the first token and to the end; the ingress's cost per request is a Ray side's
  median minus `single`'s.

Medians of --repeat runs are printed. The numbers are only figures on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_served import PROMPTS, free_port, stream_completion, wait_until_up  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Side:
    """A `pollama serve` (replicas=0) or `pollama serve --ray` with that many replicas, on a free port."""

    def __init__(self, model: str, replicas: int, clients: int, ctx: int):
        self.home = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(self.home / "models"),
               "OLLAMA_CONTEXT_LENGTH": str(ctx), "OLLAMA_KEEP_ALIVE": "30m",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "pollama.cli.main", "serve"]
        if replicas:
            cpus = max(1, (os.cpu_count() or 1) // replicas)
            config = self.home / "cluster.toml"
            config.write_text(f'keep_alive = "30m"\n\n[[models]]\nname = "{model}"\nreplicas = {replicas}\n'
                              f"num_parallel = {clients}\nnum_cpus = {cpus}\n")
            cmd += ["--ray", "--config", str(config)]
        else:
            env["OLLAMA_NUM_PARALLEL"] = str(clients)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until_up(self.base + "/api/version", self.proc, timeout=300)

    def __enter__(self) -> Side:
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # --ray: the application and Ray stop as on Ctrl+C
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.home, ignore_errors=True)


def throughput(base: str, model: str, clients: int, rounds: int, tokens: int, salt: str) -> dict:
    """requests/s and completion tokens/s of `clients` clients sending `rounds` requests each."""
    done: list[int] = []
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        for r in range(rounds):
            prompt = f"{salt}{r} " + PROMPTS[i % len(PROMPTS)]
            done.append(stream_completion(base, model, prompt, tokens, raw_generate=True)[2])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests_s": len(done) / wall, "tokens_s": sum(done) / wall}


def latency(base: str, model: str, count: int) -> dict:
    """Median time to first token and to the end of one-token requests sent one at a time."""
    firsts, totals = [], []
    for n in range(count):
        first, total, _ = stream_completion(base, model, f"{1000 + n}, {1001 + n},", 1, raw_generate=True)
        firsts.append(first)
        totals.append(total)
    return {"ttft_ms": 1000 * statistics.median(firsts), "total_ms": 1000 * statistics.median(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--latency", type=int, default=20, help="one-token requests for the added latency")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--sides", default="single,ray-1,ray-2")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeat):
        for side in args.sides.split(","):
            replicas = 0 if side == "single" else int(side.split("-")[1])
            with Side(args.model, replicas, args.clients, args.ctx) as server:
                throughput(server.base, args.model, args.clients, 1, 8, salt=f"warm{repeat} ")
                run = throughput(server.base, args.model, args.clients, args.rounds, args.tokens, salt=f"{repeat} ")
                run.update(latency(server.base, args.model, args.latency))
                runs.setdefault(side, []).append(run)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    print(f"{args.model}: {args.clients} streaming clients x {args.rounds} requests x {args.tokens} tokens "
          f"(/api/generate raw, greedy); latency: {args.latency} one-token requests; median of {args.repeat}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'side':8} {'requests/s':>11} {'tokens/s':>9} {'TTFT 1-token':>13} {'total 1-token':>14} {'added vs single':>16}")
    for side in runs:
        added = f"{med(side, 'ttft_ms') - med('single', 'ttft_ms'):+13.1f} ms" if "single" in runs else ""
        print(f"{side:8} {med(side, 'requests_s'):11.2f} {med(side, 'tokens_s'):9.1f} "
              f"{med(side, 'ttft_ms'):10.1f} ms {med(side, 'total_ms'):11.1f} ms {added:>16}")


if __name__ == "__main__":
    main()
