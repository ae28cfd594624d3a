"""Benchmark (not a test): a vision encoder's full attention over one image, plain vs fused.

    .venv/bin/python bench/bench_encoder_attention.py [--patches 4096] [--heads 16] [--head-dim 72]

The default is Gemma 3's SigLIP on an 896 px image (64 x 64 patches, 16 heads of 72). The
plain kernel (llama.cpp's non-flash path: k·q, softmax, v·kq) holds the float32 scores
[heads, patches, patches]; the fused one (ggml_flash_attn_ext, what nn.attend uses) does not.
Each way runs in a child process of its own, so its peak RSS is its own.

Measured on this 2-core machine (4096 patches, 16 heads of 72, float32 K/V):
    plain  2.12 s, peak RSS +1079 MiB
    fused  0.80 s, peak RSS +55 MiB
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def run_one(fused: bool, patches: int, heads: int, head_dim: int) -> dict:
    from pollama.ml.ggml.backend import GGMLBackend

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((patches, heads, head_dim)).astype(np.float32) for _ in range(3))
    backend = GGMLBackend(n_threads=2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with backend.context() as ctx:
        Q, K, V = ctx.input(q), ctx.input(k), ctx.input(v)
        values = V if fused else V.permute(1, 2, 0)  # rows for the fused kernel, transposed for the plain one
        ctx.compute(ctx.attention(Q, K, values, None, head_dim**-0.5, flash=fused))
    seconds = time.perf_counter() - start
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    backend.close()
    return {"seconds": seconds, "rss_mib": rise}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=72)
    parser.add_argument("--child", choices=["plain", "fused"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child == "fused", args.patches, args.heads, args.head_dim)))
        return 0
    print(f"{args.patches} patches, {args.heads} heads of {args.head_dim}, 2 threads")
    for kind in ("plain", "fused"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--patches", str(args.patches),
                              "--heads", str(args.heads), "--head-dim", str(args.head_dim)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{kind:6s} {result['seconds']:.2f} s, peak RSS +{result['rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
