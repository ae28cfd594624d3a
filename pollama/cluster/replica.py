"""One replica of a model's Ray Serve deployment: it owns one runner process (the one decode
loop, with its num_parallel slots and prefix cache) through the server's own Scheduler.

The ingress sends it the runner protocol's requests (pollama/runner/serve.py) with the load
spec to serve them under; answers and errors come back as the runner's lines, so the
ingress's RemoteRunner reads them as the server reads a local runner's. A stream's first
line names the replica ({"replica": id}), for prefix affinity and the response header.

The replica resolves the model in its own store (pulling it from its registry when told to):
on a node-local store the file is where that store keeps it (the spec's path is the ingress's).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

from pollama.server.config import ServerConfig
from pollama.server.errors import APIError
from pollama.server.models import ModelRef, resolve_model
from pollama.server.runner import LoadSpec
from pollama.server.scheduler import Scheduler
from pollama.store.store import Store


def replica_id() -> str:
    """This Ray Serve replica's id ("" outside one)."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a replica (a test calling the class directly)
        return ""


def error_line(e: APIError) -> dict[str, Any]:
    return {"error": e.message, "status": e.status}


def local_model(store: Store, name: str, *, pull: bool = False, insecure: bool = False) -> ModelRef:
    """The model in this node's store; pulled from its registry first (blobs checked against
    their digests) when the store lacks it and pull is on."""
    try:
        return resolve_model(store, name)
    except APIError as e:
        if not pull or e.status != 404:
            raise
    from pollama.store.registry import pull_model

    pull_model(store, name, insecure=insecure)
    return resolve_model(store, name)


class ModelReplica:
    """A model's replica (see the module docstring); deployed by pollama.cluster.app."""

    def __init__(self, model: str, num_parallel: int, num_thread: int | None = None, store: str | None = None,
                 pull: bool = False, insecure: bool = False):
        self.store = Store(store) if store else Store()
        self.model = local_model(self.store, model, pull=pull, insecure=insecure)
        config = ServerConfig.from_env()
        # One model per replica; its requests may use all its slots.
        self.config = dataclasses.replace(config, num_parallel=num_parallel, max_loaded_models=1)
        self.num_thread = num_thread
        self.scheduler = Scheduler(self.config)
        self.served = 0

    def _spec(self, spec: LoadSpec) -> LoadSpec:
        """The ingress's spec as this replica loads it: its own file, its slots, and as many
        threads as Ray gave it CPUs unless the request asked for a number."""
        slots = 1 if spec.kind == "embedding" else self.config.num_parallel
        return dataclasses.replace(spec, model_path=str(self.model.model_path), num_parallel=slots,
                                   num_thread=spec.num_thread or self.num_thread)

    async def hello(self, spec: LoadSpec, keep_alive: float | None) -> dict[str, Any]:
        """The loaded runner's facts (num_ctx, special tokens), loading it if need be."""
        try:
            async with self.scheduler.use(self.model, self._spec(spec), keep_alive) as loaded:
                return {**loaded.runner.hello(), "replica": replica_id(), "pid": os.getpid()}
        except APIError as e:
            return error_line(e)

    async def call(self, spec: LoadSpec, keep_alive: float | None, request: dict[str, Any]) -> dict[str, Any]:
        """A runner request with one answer line (tokenize, detokenize, embed)."""
        try:
            async with self.scheduler.use(self.model, self._spec(spec), keep_alive) as loaded:
                return await loaded.runner.call(request)
        except APIError as e:
            return error_line(e)

    async def stream(self, spec: LoadSpec, keep_alive: float | None, request: dict[str, Any],
                     prefer: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """{"replica"}, then the runner's lines for request. prefer is the router's (pollama.cluster.router)."""
        yield {"replica": replica_id()}
        self.served += 1
        try:
            async with self.scheduler.use(self.model, self._spec(spec), keep_alive) as loaded:
                async for message in loaded.runner.stream(request):
                    yield message
        except APIError as e:
            yield error_line(e)

    async def unload(self) -> None:
        await self.scheduler.unload(self.model.name)

    def status(self) -> dict[str, Any]:
        """What this replica holds: for /api/ps across the cluster and for tests."""
        running = self.scheduler.running()
        return {"replica": replica_id(), "pid": os.getpid(), "served": self.served,
                "loaded": [{"spec": dataclasses.asdict(m.spec), "num_ctx": m.runner.num_ctx, "runner_pid": m.runner.pid}
                           for m in running]}

    async def __del__(self):
        await self.scheduler.close()
