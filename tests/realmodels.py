"""Helpers shared by tests: where ../shared lives, and the real models installed from PyPI."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LLAMACPP_REFERENCE = SHARED / "reference" / "llamacpp-shared.json"

# Embedded model name -> its key in llamacpp-shared.json.
REFERENCE_MODELS = {
    "smollm2": "smollm2-135m-instruct-q4_1",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "gemma3-270m": "gemma3-270m-q4_k_m",
}


def real_model(name: str) -> Path:
    """Path of an installed real model, or skip the test saying how to install it."""
    from pollama.store.embedded import embedded_model_path

    try:
        return embedded_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def llamacpp_tool(name: str) -> Path:
    """A llama.cpp tool built by ../shared/tools/build_llamacpp_tools.sh ($LLAMACPP_TOOLS, else
    <temp>/llamacpp-tools/bin), or skip: the build takes ~20 minutes, so CI does not run it."""
    import os
    import tempfile

    bin_dir = Path(os.environ.get("LLAMACPP_TOOLS") or Path(tempfile.gettempdir()) / "llamacpp-tools" / "bin")
    tool = bin_dir / name
    if not tool.is_file():
        pytest.skip(f"{tool} is absent (build it with ../shared/tools/build_llamacpp_tools.sh)")
    return tool


def llamacpp_loads(gguf: Path) -> None:
    """Assert that llama.cpp loads a GGUF and decodes a token with it (llama-bench, 1 thread),
    which proves its metadata keys and tensor names are the ones llama.cpp reads."""
    import subprocess

    bench = llamacpp_tool("llama-bench")
    run = subprocess.run([str(bench), "-m", str(gguf), "-p", "0", "-n", "1", "-r", "1", "-t", "1", "-o", "json"],
                         capture_output=True, text=True, timeout=300,
                         env={"LD_LIBRARY_PATH": str(bench.parent)})
    assert run.returncode == 0, f"llama.cpp could not run {gguf.name}:\n{run.stderr[-3000:]}"


def llamacpp_greedy(gguf: Path, ids: list[int], steps: int, f32_cache: bool = True) -> list[int]:
    """llama.cpp's greedy continuation of token ids (llama-server's /completion, 1 thread, one
    slot, F32 K/V unless told), or skip where the tools are not built."""
    import json
    import socket
    import subprocess
    import time
    import urllib.request

    server = llamacpp_tool("llama-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = ["-ctk", "f32", "-ctv", "f32"] if f32_cache else []
    proc = subprocess.Popen([str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", "1",
                             "-c", str(max(64, len(ids) + steps)), "-np", "1", *cache],
                            env={"LD_LIBRARY_PATH": str(server.parent)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"llama-server did not start on {gguf.name}:\n"
                                         f"{proc.communicate()[0].decode(errors='replace')[-3000:]}") from None
                time.sleep(0.2)
        body = {"prompt": ids, "n_predict": steps, "samplers": ["top_k"], "top_k": 1, "temperature": 0,
                "return_tokens": True, "cache_prompt": False}
        request = urllib.request.Request(f"{url}/completion", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["tokens"]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
