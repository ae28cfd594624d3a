"""The ingress's side of the model replicas: a scheduler for the server's routes whose
runners are Ray Serve deployments (pollama.server.common.State takes it in place of the
local Scheduler, so every route runs unchanged).

- ClusterScheduler.use(model, spec) gives a RemoteRunner for the model's deployment, with the
  facts of a loaded runner (num_ctx, special tokens) asked of a replica once per spec.
- RemoteRunner.stream sends a completion with the replica that holds the longest part of its
  prompt (pollama.cluster.affinity) as `prefer`, for the router (pollama.cluster.router);
  other requests (tokenize, embed) go to any replica.
- A replica that dies fails the requests it was serving with a RunnerError naming it; Ray
  Serve restarts it and routes new requests to the live ones.
- The replica that answered is sent back in the x-pollama-replica header (ServedBy).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from pollama.cluster.affinity import PrefixTable
from pollama.server.errors import APIError, RunnerError
from pollama.server.models import ModelRef
from pollama.server.runner import LoadSpec, RunnerClient

REPLICA_HEADER = b"x-pollama-replica"
CACHED_HEADER = b"x-pollama-prompt-cached"


@dataclass
class Served:
    """Who answered the current HTTP request: replicas, and the prompt tokens their runners
    found cached (known before the response starts only when it is not streamed)."""

    replicas: list[str] = field(default_factory=list)
    prompt_cached: list[int] = field(default_factory=list)


_served: contextvars.ContextVar[Served | None] = contextvars.ContextVar("pollama_served", default=None)


def _answer(message: Any, name: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RunnerError(f"model replica for {name} gave no answer")
    if "error" in message:
        raise APIError(int(message.get("status") or 500), message["error"])
    return message


def _replica_failure(name: str, replica: str | None, e: Exception) -> RunnerError:
    """A clear message for a replica that died or could not be reached."""
    who = f"model replica {replica} for {name}" if replica else f"a model replica for {name}"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RunnerError(f"{who} failed during the request: {type(e).__name__}: {reason}")


# What a call to a replica raises when the replica died, could not be reached or refused.
RAY_FAILURES = (RayError, RayServeException)


@contextlib.contextmanager
def _replica_failures(name: str):
    """Ray's failures of a call to some replica of model `name`, as a RunnerError."""
    try:
        yield
    except RAY_FAILURES as e:
        raise _replica_failure(name, None, e) from None


class RemoteRunner(RunnerClient):
    """A runner in some replica of a model's deployment (see the module docstring)."""

    def __init__(self, name: str, spec: LoadSpec, keep_alive: float | None, handle, table: PrefixTable,
                 hello: dict[str, Any]):
        super().__init__(name, spec)
        self.keep_alive, self.handle, self.table = keep_alive, handle, table
        self.take_hello(hello)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        prompt = request.get("prompt") if request.get("op") == "completion" else None
        prefer = self.table.preferred(prompt) if prompt else None
        answers = self.handle.options(stream=True).stream.remote(self.spec, self.keep_alive, request, prefer=prefer)
        replica, text = None, []
        try:
            async for message in answers:
                if "replica" in message:
                    replica = message["replica"]
                    if (served := _served.get()) is not None:
                        served.replicas.append(replica)
                    if prompt:
                        self.table.record(prompt, replica)
                    continue
                message = _answer(message, self.name)
                text.append(message.get("content") or "")
                yield message
                if message.get("done"):
                    if (served := _served.get()) is not None and "prompt_cached" in message:
                        served.prompt_cached.append(int(message["prompt_cached"]))
                    if prompt:
                        # The slot now holds the answer too: the next turn's prompt starts with both.
                        self.table.record(prompt + "".join(text), replica)
                    return
        except RAY_FAILURES as e:
            if replica:
                self.table.forget(replica)  # its K/V went with it
            raise _replica_failure(self.name, replica, e) from None
        finally:
            answers.cancel()  # a no-op once done; else the replica's generator (and runner request) ends
        raise _replica_failure(self.name, replica, RuntimeError("the answer ended before it was done"))

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        with _replica_failures(self.name):
            message = await self.handle.call.remote(self.spec, self.keep_alive, request)
        return _answer(message, self.name)

    def call_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        # From a worker thread (prompt assembly): no event loop runs here, so .result() may block.
        with _replica_failures(self.name):
            message = self.handle.call.remote(self.spec, self.keep_alive, request).result()
        return _answer(message, self.name)


@dataclass(eq=False)
class Used:
    """A model as the ingress knows it: the routes read .model, .runner and .until()."""

    model: ModelRef
    runner: RemoteRunner
    keep_alive: float
    last_used: float = field(default_factory=time.monotonic)

    def until(self) -> datetime:
        now = datetime.now(UTC).astimezone()
        if math.isinf(self.keep_alive) or self.keep_alive < 0:
            return now + timedelta(days=365 * 290)
        return now + timedelta(seconds=max(0.0, self.keep_alive - (time.monotonic() - self.last_used)))


class ClusterScheduler:
    """The server's scheduler interface (use, unload, running, close) over model deployments."""

    def __init__(self, handles: dict[str, Any], keep_alive: float):
        self.handles = handles  # the model's name as the store resolves it -> its deployment's handle
        self.keep_alive = keep_alive
        self.tables = {name: PrefixTable() for name in handles}
        self._hellos: dict[tuple[str, LoadSpec], dict[str, Any]] = {}
        self._used: dict[str, Used] = {}

    def _handle(self, model: ModelRef):
        handle = self.handles.get(model.name)
        if handle is None:
            deployed = ", ".join(sorted(self.handles)) or "none"
            raise APIError(404, f'model "{model.name}" is not deployed in this cluster (deployed: {deployed})')
        return handle

    @contextlib.asynccontextmanager
    async def use(self, model: ModelRef, spec: LoadSpec, keep_alive: float | None) -> AsyncIterator[Used]:
        handle = self._handle(model)
        keep_alive = self.keep_alive if keep_alive is None else keep_alive
        key = (model.name, spec)
        hello = self._hellos.get(key)
        if hello is None:
            with _replica_failures(model.name):
                hello = _answer(await handle.hello.remote(spec, keep_alive), model.name)
            self._hellos[key] = hello
        used = Used(model, RemoteRunner(model.name, spec, keep_alive, handle, self.tables[model.name], hello), keep_alive)
        self._used[model.name] = used
        yield used
        used.last_used = time.monotonic()

    async def unload(self, name: str) -> None:
        """Forget the model here; its replicas stay up until the autoscaler scales them down."""
        self._used.pop(name, None)

    def running(self) -> list[Used]:
        """The models this ingress has served within their keep_alive, the most recent first."""
        now = time.monotonic()
        live = [u for u in self._used.values()
                if u.keep_alive < 0 or math.isinf(u.keep_alive) or now - u.last_used < u.keep_alive]
        return sorted(live, key=lambda u: -u.last_used)

    async def close(self) -> None:
        await asyncio.sleep(0)


class ServedBy:
    """ASGI middleware: the x-pollama-replica header names the replica(s) that answered, and
    x-pollama-prompt-cached the prompt tokens they found cached (for a whole answer)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        served = Served()
        token = _served.set(served)

        async def send_with_headers(message):
            if message["type"] == "http.response.start" and served.replicas:
                headers = list(message.get("headers", []))
                headers.append((REPLICA_HEADER, ",".join(dict.fromkeys(served.replicas)).encode()))
                if served.prompt_cached:
                    headers.append((CACHED_HEADER, str(sum(served.prompt_cached)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _served.reset(token)
