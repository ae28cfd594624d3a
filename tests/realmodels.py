"""Helpers shared by tests: where ../shared lives, and the real models installed from PyPI."""

from __future__ import annotations

import os
import sys
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


# llama.cpp's own tokenizer tests (models/ggml-vocab-NAME.gguf, .inp, .out), which setup.sh --test
# extracts from the llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e570); POLLAMA_LLAMACPP_VOCAB
# names another folder.
LLAMACPP_VOCAB = Path(os.environ.get("POLLAMA_LLAMACPP_VOCAB") or Path(sys.prefix) / "share" / "llamacpp-vocab")


def llamacpp_vocab(name: str) -> Path:
    """llama.cpp's models/ggml-vocab-NAME.gguf, or skip when setup did not fetch them."""
    if not (LLAMACPP_VOCAB / "ggml-vocab-gemma-4.gguf.out").is_file():
        pytest.skip(f"llama.cpp's vocab tests are not in {LLAMACPP_VOCAB}: ./setup.sh --test extracts them from "
                    "the llama-cpp-python 0.3.36 sdist (or set POLLAMA_LLAMACPP_VOCAB)")
    return LLAMACPP_VOCAB / f"ggml-vocab-{name}.gguf"


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


def llamacpp_greedy(gguf: Path, ids: list[int], steps: int) -> list[int]:
    """llama.cpp's greedy continuation of token ids on a GGUF (llama-server, 1 thread, F32 K/V
    cache, end tokens ignored): what llama.cpp computes from the file, to compare with ours.

    Flash attention off: with it (llama-server's default on CPU) the tiny Qwen3 case's logits
    differ from transformers' enough to flip its near tie at step 14 (a gap of 7.6e-4).
    """
    import socket
    import subprocess
    import time

    import httpx

    server = llamacpp_tool("llama-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(server), "-m", str(gguf), "--port", str(port), "-t", "1", "-c", str(len(ids) + steps + 16), "-np", "1",
         "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-warmup"],
        env={"LD_LIBRARY_PATH": str(server.parent)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"llama-server could not run {gguf.name}:\n{proc.stderr.read()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama-server did not start in 120 s"
            time.sleep(0.2)
        r = httpx.post(url + "/completion", timeout=120, json={
            "prompt": ids, "n_predict": steps, "temperature": 0, "ignore_eos": True, "return_tokens": True,
            "cache_prompt": False})
        assert r.status_code == 200, r.text
        return r.json()["tokens"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
