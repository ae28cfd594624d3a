"""Which models are loaded: load on first use, share, expire after keep_alive, evict, reload.

As Ollama's scheduler (server/sched.go):
- a request names a model and its load-time options (a LoadSpec); a loaded runner with the
  same spec is shared, and its sequences (OLLAMA_NUM_PARALLEL) decode together in it;
- a different spec (num_ctx, num_batch, num_thread, ...) reloads the model once its
  current requests are done;
- at most OLLAMA_MAX_LOADED_MODELS are loaded: a new one evicts the least recently used idle
  model, or waits until one is idle (a busy model is never evicted);
- when the last request on a model ends, its keep_alive (the request's, else
  OLLAMA_KEEP_ALIVE) starts: 0 unloads at once, a negative value never;
- at most OLLAMA_MAX_QUEUE requests are in the scheduler (waiting or running); more get 503;
- a runner that dies is forgotten at once, and the next request loads the model again.
All state lives on the event loop; loads run outside the lock so other models keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from pollama.server.config import ServerConfig
from pollama.server.errors import APIError
from pollama.server.models import ModelRef
from pollama.server.runner import LoadSpec, RunnerProcess

log = logging.getLogger(__name__)

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
FOREVER_UNTIL = timedelta(days=365 * 290)  # what Go's now + MaxInt64 ns comes to, near enough


@dataclass(eq=False)
class Loaded:
    """A model in a runner process (or being loaded into one)."""

    model: ModelRef
    spec: LoadSpec
    runner: RunnerProcess
    ready: asyncio.Future
    keep_alive: float
    refcount: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: datetime | None = None  # set while idle with a finite keep_alive
    timer: asyncio.TimerHandle | None = None
    unload_when_idle: bool = False

    # Which replica holds it, in a cluster's /api/ps (pollama.cluster.remote.OnReplica); none here.
    replica: ClassVar[str] = ""

    @property
    def context_length(self) -> int:
        return self.runner.num_ctx

    @property
    def size_vram(self) -> int:
        """Bytes the runner placed on a GPU device (0 on the CPU alone)."""
        return self.runner.size_vram

    @property
    def placed_size(self) -> int:
        """Bytes of weights and caches the runner placed, device and CPU together."""
        return self.runner.size

    def until(self) -> datetime:
        """When this model will be unloaded if nothing uses it (far away when never)."""
        if self.expires_at is not None:
            return self.expires_at
        now = datetime.now(UTC).astimezone()
        if math.isinf(self.keep_alive):
            return now + FOREVER_UNTIL
        return now + timedelta(seconds=self.keep_alive)


class Scheduler:
    """Loads, shares and unloads runner processes (see the module docstring)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.loaded: dict[str, Loaded] = {}
        self.in_flight = 0
        self.changed = asyncio.Condition()
        self._closing = False
        self._tasks: set[asyncio.Task] = set()  # the loop holds tasks weakly: keep them alive here

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- use --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, model: ModelRef, spec: LoadSpec, keep_alive: float | None) -> AsyncIterator[Loaded]:
        """The model loaded with spec, held for the duration of a request."""
        if self.in_flight >= self.config.max_queue:
            raise APIError(503, BUSY_MESSAGE)
        self.in_flight += 1
        try:
            loaded = await self._acquire(model, spec, self.config.keep_alive if keep_alive is None else keep_alive)
            try:
                yield loaded
            finally:
                await self._release(loaded)
        finally:
            self.in_flight -= 1

    async def _acquire(self, model: ModelRef, spec: LoadSpec, keep_alive: float) -> Loaded:
        key = model.name
        async with self.changed:
            while True:
                if self._closing:
                    raise APIError(503, "server is shutting down")
                current = self.loaded.get(key)
                if current is not None and current.ready.done() and not current.runner.alive:
                    self._forget(current)
                    continue
                if current is not None and current.spec.serves(spec):
                    current.refcount += 1
                    current.keep_alive = keep_alive
                    current.unload_when_idle = False
                    self._cancel_timer(current)
                    break
                if current is not None:
                    # Other load-time options: reload when the model's requests are done.
                    if current.refcount > 0 or not current.ready.done():
                        await self.changed.wait()
                        continue
                    await self._unload(current)
                    continue
                if len(self.loaded) >= self.config.max_loaded_models:
                    idle = [m for m in self.loaded.values() if m.refcount == 0 and m.ready.done()]
                    if not idle:
                        await self.changed.wait()
                        continue
                    await self._unload(min(idle, key=lambda m: m.last_used))
                    continue
                current = Loaded(model, spec, RunnerProcess(key, spec), asyncio.get_running_loop().create_future(), keep_alive, refcount=1)
                self.loaded[key] = current
                self._spawn(self._load(current))
                break
        try:
            await asyncio.shield(current.ready)
        except BaseException:
            await self._release(current)
            raise
        return current

    async def _load(self, loaded: Loaded) -> None:
        try:
            await loaded.runner.start(self.config.load_timeout)
        except BaseException as e:  # noqa: BLE001 - waiters must hear of any failure, cancellation included
            async with self.changed:
                self._forget(loaded)
            if not loaded.ready.done():
                loaded.ready.set_exception(e if isinstance(e, Exception) else APIError(500, "model load was interrupted"))
                loaded.ready.exception()  # retrieved here too, so an unwaited failure is not logged as lost
            return
        loaded.ready.set_result(True)
        self._spawn(self._forget_when_dead(loaded))

    async def _forget_when_dead(self, loaded: Loaded) -> None:
        await loaded.runner.exited.wait()
        async with self.changed:
            self._forget(loaded)
        await loaded.runner.stop()  # removes its socket directory

    async def _release(self, loaded: Loaded) -> None:
        async with self.changed:
            loaded.refcount -= 1
            loaded.last_used = time.monotonic()
            if loaded.refcount == 0 and self.loaded.get(loaded.model.name) is loaded:
                if loaded.keep_alive <= 0 or loaded.unload_when_idle:
                    await self._unload(loaded)
                elif not math.isinf(loaded.keep_alive):
                    self._start_timer(loaded)
            self.changed.notify_all()

    # -- expiry and unloading -----------------------------------------------------------
    def _start_timer(self, loaded: Loaded) -> None:
        self._cancel_timer(loaded)
        loaded.expires_at = datetime.now(UTC).astimezone() + timedelta(seconds=loaded.keep_alive)
        loaded.timer = asyncio.get_running_loop().call_later(
            loaded.keep_alive, lambda: self._spawn(self._expire(loaded))
        )

    def _cancel_timer(self, loaded: Loaded) -> None:
        if loaded.timer is not None:
            loaded.timer.cancel()
            loaded.timer = None
        loaded.expires_at = None

    async def _expire(self, loaded: Loaded) -> None:
        async with self.changed:
            if loaded.refcount == 0 and self.loaded.get(loaded.model.name) is loaded:
                log.info("unloading %s: keep_alive expired", loaded.model.name)
                await self._unload(loaded)

    def _forget(self, loaded: Loaded) -> None:
        """Drop a model from the table (its process is gone or going); callers hold the lock."""
        self._cancel_timer(loaded)
        if self.loaded.get(loaded.model.name) is loaded:
            del self.loaded[loaded.model.name]
        self.changed.notify_all()

    async def _unload(self, loaded: Loaded) -> None:
        self._forget(loaded)
        await loaded.runner.stop()

    async def unload(self, name: str) -> None:
        """Unload a model now, or as soon as its running requests end (keep_alive 0)."""
        async with self.changed:
            loaded = self.loaded.get(name)
            if loaded is None:
                return
            if loaded.refcount == 0 and loaded.ready.done():
                await self._unload(loaded)
            else:
                loaded.unload_when_idle = True
                loaded.keep_alive = 0

    def running(self) -> list[Loaded]:
        """Loaded models (not those still loading), the most recently used first."""
        models = [m for m in self.loaded.values() if m.ready.done() and not m.ready.cancelled() and m.ready.exception() is None]
        return sorted(models, key=lambda m: -m.last_used)

    async def loaded_models(self) -> list[Loaded]:
        """/api/ps's models (a cluster's scheduler asks its replicas here)."""
        return self.running()

    def deployed(self) -> list[ModelRef] | None:
        """The models /api/tags lists when not the store's (a cluster's deployed models); None
        here: every model in the store can be loaded."""
        return None

    async def close(self) -> None:
        """Stop every runner (server shutdown)."""
        self._closing = True
        for loaded in list(self.loaded.values()):
            self._cancel_timer(loaded)
            await loaded.runner.stop()
        self.loaded.clear()
