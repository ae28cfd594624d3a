"""/api/ps and `pollama ps` with layers on a Vulkan device (Mesa's lavapipe without a GPU).

Skipped where the Vulkan build of ggml is absent (`./setup.sh --vulkan` makes it). The server
runs on that build with GGML_VK_VISIBLE_DEVICES=0 (ggml hides software devices otherwise);
what the runner should report is measured by loading the same model the same way in a child
process on the same build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cliproc import pollama

VULKAN_LIB_DIR = Path(os.environ.get("POLLAMA_GGML_VULKAN_LIB_DIR") or Path(sys.prefix) / "lib" / "pollama-ggml-vulkan")
ON_VULKAN = {"POLLAMA_GGML_LIB_DIR": str(VULKAN_LIB_DIR), "GGML_VK_VISIBLE_DEVICES": os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")}
SMOLLM2_LAYERS = 31  # 30 blocks and the output layer


@pytest.fixture(scope="module")
def vulkan_server(server_factory):
    if not (VULKAN_LIB_DIR / "BUILD").is_file():
        pytest.skip(f"no Vulkan build of ggml in {VULKAN_LIB_DIR}: ./setup.sh --vulkan makes one")
    return server_factory(**ON_VULKAN)


def placed(path: Path, num_ctx: int, num_gpu: int) -> list[int]:
    """(size, size_vram) of smollm2 loaded as the server's runner loads it (2 sequences)."""
    code = ("import json, sys; from pollama.runner.parallel import ParallelEngine\n"
            "with ParallelEngine(sys.argv[1], num_ctx=int(sys.argv[2]), num_parallel=2, num_gpu=int(sys.argv[3])) as e:\n"
            "    print(json.dumps(e.engine.backend.memory()))")
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, **ON_VULKAN, PYTHONPATH=repo)
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(num_ctx), str(num_gpu)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def load(server, num_gpu: int) -> dict:
    with server.http() as http:
        reply = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                                 "options": {"num_gpu": num_gpu, "num_predict": 1}})
        assert reply.status_code == 200, reply.text
        return next(m for m in http.get("/api/ps").json()["models"] if m["name"] == "smollm2:latest")


def ps_processor(server) -> str:
    ps = pollama("ps", env={"OLLAMA_HOST": server.host, "OLLAMA_MODELS": str(server.models)})
    assert ps.returncode == 0, ps.stderr
    row = next(r for r in ps.stdout.splitlines() if r.startswith("smollm2:latest"))
    return row


@pytest.mark.parametrize("num_gpu", [15, SMOLLM2_LAYERS, 0])
def test_ps_reports_the_bytes_on_the_device(vulkan_server, smollm2_path, num_gpu):
    model = load(vulkan_server, num_gpu)
    size, size_vram = placed(smollm2_path, model["context_length"], num_gpu)
    row = ps_processor(vulkan_server)
    if num_gpu == 0:  # the CPU alone: today's path, the model's own size
        assert model["size_vram"] == 0 and "100% CPU" in row
        return
    assert (model["size"], model["size_vram"]) == (size, size_vram)
    if num_gpu == SMOLLM2_LAYERS:
        assert size == size_vram and "100% GPU" in row
    else:
        assert 0 < size_vram < size
        cpu = int((size - size_vram) * 100 / size + 0.5)
        assert f"{cpu}%/{100 - cpu}% CPU/GPU" in row, row
