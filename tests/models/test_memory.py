"""Weights stay in their GGUF form: loading a model costs about its file size, not a copy more."""

from __future__ import annotations

import subprocess
import sys

from realmodels import real_model

# Runs in a fresh process so that nothing else this test session loaded counts.
MEASURE = r"""
import os, sys
import psutil
from pollama.fs.gguf import GGUFFile
from pollama.ml.ggml.backend import GGMLBackend
from pollama.models.base import load_model
from pollama.nn import Batch
from pollama.tokenizer import load_tokenizer

path = sys.argv[1]
gguf = GGUFFile(path)
tokens = load_tokenizer(gguf.metadata).encode("The capital of France is")
before = psutil.Process().memory_info().rss
backend = GGMLBackend()
model = load_model(gguf, backend)
cache = model.new_cache(backend, n_ctx=256, n_batch=64)
with backend.context() as ctx:  # one forward pass, so every weight page is actually read
    batch = Batch.single(tokens, 0)
    cache.begin(ctx, batch)
    ctx.compute(model.forward(ctx, batch, cache))
# VmHWM is this process's own peak; ru_maxrss would carry over the parent's peak through exec.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
print(peak - before, os.path.getsize(path))
"""


def test_loading_smollm2_costs_at_most_1_3x_its_file_size():
    """Peak RSS growth from loading the model and running it once (tokenizer excluded)."""
    path = real_model("smollm2")
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True)
    grown, size = map(int, out.stdout.split())
    assert grown <= 1.3 * size, f"peak RSS grew {grown / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
    # And the weights really were read (a lazy no-op load would pass the bound trivially).
    assert grown >= 0.8 * size, f"peak RSS grew only {grown / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
