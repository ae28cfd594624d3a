"""Benchmark (not a test): peak memory and time of `create` and `create -q` on a big model.

    .venv/bin/python bench/bench_create_memory.py [layers]

Builds a synthetic Llama of F16 safetensors (20 MiB a layer, 2 to 4 MiB a tensor; 16 layers
by default = 320 MiB, 48 = 960 MiB), then runs create (convert to F16 GGUF) and create -q
q8_0 in a fresh process each, reporting how far peak RSS rose above where it stood. Target:
the rise stays at about one tensor's worth (tens of MiB) whatever the model's size.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from tests.create.test_streaming_memory import measure, write_big_llama

MiB = 2**20


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    with tempfile.TemporaryDirectory(prefix="bench-create-") as tmp:
        weights = write_big_llama(Path(tmp) / "big", layers)
        got = measure(Path(tmp) / "big", Path(tmp) / "store")
    print(f"synthetic llama, {layers} layers, {weights / MiB:.0f} MiB of F16 safetensors")
    for step in ("create", "create -q"):
        print(f"{step:10s} output {got['size'][step] / MiB:7.1f} MiB   peak RSS rise "
              f"{got['rise'][step] / MiB:6.1f} MiB   {got['seconds'][step]:6.1f} s")


if __name__ == "__main__":
    main()
