"""The server's side of a runner process: start it, send it requests, notice when it dies.

See pollama/runner/serve.py for the protocol. Each request opens its own connection to the
runner's Unix socket, which lives in a private temporary directory; closing the connection
cancels the request inside the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollama.server.errors import APIError, RunnerError

log = logging.getLogger(__name__)

LINE_LIMIT = 256 << 20  # an embed answer of many vectors is one line


@dataclass(frozen=True)
class LoadSpec:
    """Everything that fixes how a model is loaded: a difference means a reload."""

    model_path: str
    kind: str  # "completion" or "embedding"
    num_ctx: int
    num_batch: int
    num_parallel: int
    num_thread: int | None = None
    kv_cache_type: str | None = None
    backend: str = "ggml"
    draft_path: str | None = None  # a draft model for speculative decoding


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class RunnerClient:
    """What the routes use of a loaded model's runner: its context size and special tokens
    (from its hello line), and requests by the protocol of pollama/runner/serve.py. A
    RunnerProcess talks to its child process; pollama.cluster.remote.RemoteRunner to a Ray
    Serve replica that owns one."""

    def __init__(self, name: str, spec: LoadSpec):
        self.name = name
        self.spec = spec
        self.num_ctx = spec.num_ctx
        self.load_duration = 0
        self.bos_token = self.eos_token = ""  # texts of the model's special tokens
        self.adds_bos = False  # whether the tokenizer puts BOS before every prompt
        self.max_token_chars = 0  # input characters one token stands for at most (runner/limits.py)

    def take_hello(self, hello: dict[str, Any]) -> None:
        """The loaded runner's facts, from its {"ready"} line."""
        self.num_ctx = int(hello.get("num_ctx") or self.spec.num_ctx)
        self.load_duration = int(hello.get("load_duration") or 0)
        self.bos_token = str(hello.get("bos_token") or "")
        self.adds_bos = bool(hello.get("add_bos"))
        self.eos_token = str(hello.get("eos_token") or "")
        self.max_token_chars = int(hello.get("max_token_chars") or 0)

    def hello(self) -> dict[str, Any]:
        """The facts take_hello reads, as the runner's hello line gives them."""
        return {"num_ctx": self.num_ctx, "load_duration": self.load_duration, "bos_token": self.bos_token,
                "add_bos": self.adds_bos, "eos_token": self.eos_token, "max_token_chars": self.max_token_chars}

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield its answer lines (an error line raises APIError)."""
        raise NotImplementedError

    def call_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        """call() from a worker thread (for prompt assembly, which counts tokens synchronously)."""
        raise NotImplementedError

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request with a single answer line."""
        async for message in self.stream(request):
            return message
        raise RunnerError(f"model runner for {self.name} gave no answer")

    def specials(self):
        """The special-token texts prompt templates need (pollama.server.prompt.Specials)."""
        from pollama.server.prompt import Specials

        return Specials(self.bos_token, self.eos_token, self.adds_bos, self.max_token_chars)

    def tokenize_sync(self, text: str) -> list[int]:
        return self.call_sync({"op": "tokenize", "content": text})["tokens"]


class RunnerProcess(RunnerClient):
    """One child process serving one model."""

    def __init__(self, name: str, spec: LoadSpec):
        super().__init__(name, spec)
        self.proc: asyncio.subprocess.Process | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="pollama-runner-"))  # mode 0700: ours alone
        self.socket_path = self.dir / "runner.sock"
        self.exited = asyncio.Event()
        self._watch: asyncio.Task | None = None
        self._drain: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, timeout: float) -> None:
        """Spawn the runner and wait until its model is loaded; RunnerError if it cannot load."""
        spec = self.spec
        cmd = [
            sys.executable, "-m", "pollama.runner.serve", "--model", spec.model_path, "--socket", str(self.socket_path),
            "--kind", spec.kind, "--num-ctx", str(spec.num_ctx), "--num-batch", str(spec.num_batch),
            "--num-parallel", str(spec.num_parallel),
        ]
        if spec.num_thread:
            cmd += ["--num-thread", str(spec.num_thread)]
        if spec.kv_cache_type:
            cmd += ["--kv-cache-type", spec.kv_cache_type]
        if spec.backend != "ggml":
            cmd += ["--backend", spec.backend]
        if spec.draft_path:
            cmd += ["--draft-model", spec.draft_path]
        # ggml's threads own the cores; numpy's OpenBLAS threads, which spin after any BLAS
        # call, would steal them from ggml's barriers (numpy reads this once, at import).
        env = {"OPENBLAS_NUM_THREADS": "1", **os.environ}
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, limit=1 << 20, env=env,
        )
        log.info("runner for %s started (pid %d)", self.name, self.proc.pid)
        try:
            wait = None if math.isinf(timeout) else timeout
            hello = await asyncio.wait_for(self._hello(), wait)
        except TimeoutError:
            await self.stop()
            raise RunnerError(f"timed out loading model {self.name} after {timeout:.0f}s") from None
        except BaseException:
            await self.stop()
            raise
        if not hello.get("ready"):
            code = await self._wait_exit(5)
            await self.stop()
            reason = hello.get("error") or f"runner process ended while loading ({_exit_description(code)})"
            status = hello.get("status")
            raise RunnerError(f"error loading model {self.name}: {reason}",
                              status if status in (400, 500) else 500)
        self.take_hello(hello)
        self._watch = asyncio.create_task(self._watch_exit())
        self._drain = asyncio.create_task(self._drain_stdout())

    async def _hello(self) -> dict[str, Any]:
        """The runner's first JSON line ({"ready"} or {"error"}); other output is passed over."""
        while line := await self.proc.stdout.readline():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = None
            if isinstance(message, dict) and ("ready" in message or "error" in message):
                return message
            log.info("runner %s: %s", self.name, line.decode(errors="replace").rstrip())
        return {}

    async def _drain_stdout(self) -> None:
        # Whatever native code prints later must not fill the pipe and stall the runner.
        with contextlib.suppress(Exception):
            while line := await self.proc.stdout.readline():
                log.info("runner %s: %s", self.name, line.decode(errors="replace").rstrip())

    async def _watch_exit(self) -> None:
        await self.proc.wait()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            log.error("runner for %s (pid %d) %s", self.name, self.proc.pid, _exit_description(self.proc.returncode))
        self.exited.set()

    async def _wait_exit(self, seconds: float) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), seconds)
        return self.proc.returncode

    async def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and remove its socket directory."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            if await self._wait_exit(5) is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self._wait_exit(5)
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def died_message(self) -> str:
        code = self.proc.returncode if self.proc else None
        return f"model runner for {self.name} terminated unexpectedly ({_exit_description(code)})"

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield the runner's answer lines. An error line raises APIError.

        Leaving the iteration early (or being cancelled) closes the connection, which
        cancels the request in the runner.
        """
        if not self.alive:
            raise RunnerError(self.died_message())
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=LINE_LIMIT)
        except OSError as e:
            raise RunnerError(f"cannot reach the model runner for {self.name}: {e}") from None
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            while True:
                try:
                    line = await reader.readline()
                except (OSError, ValueError) as e:
                    line = b""
                    log.warning("runner connection for %s failed: %s", self.name, e)
                if not line:
                    await self._wait_exit(1)
                    if not self.alive:
                        raise RunnerError(self.died_message())
                    raise RunnerError(f"model runner for {self.name} closed the connection without an answer")
                message = json.loads(line)
                if "error" in message:
                    raise APIError(int(message.get("status") or 500), message["error"])
                yield message
                if message.get("done"):
                    return
        except (BrokenPipeError, ConnectionResetError):
            await self._wait_exit(1)
            raise RunnerError(self.died_message() if not self.alive else f"lost the connection to the model runner for {self.name}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def call_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket_path))
            except OSError as e:
                raise RunnerError(f"cannot reach the model runner for {self.name}: {e}") from None
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline(LINE_LIMIT)
        if not line:
            raise RunnerError(self.died_message() if not self.alive else f"model runner for {self.name} gave no answer")
        message = json.loads(line)
        if "error" in message:
            raise APIError(int(message.get("status") or 500), message["error"])
        return message
