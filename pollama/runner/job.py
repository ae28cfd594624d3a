"""A generation request to ParallelEngine (parallel.py): the events it yields as the engine
thread makes them, and its cancellation."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence

from pollama.models.multimodal import Item
from pollama.runner.generation import Done, GenerateOptions, Piece

_END = object()  # ends a Job's event stream without a Done (cancelled, or the engine closed)


class EngineClosed(RuntimeError):
    """The engine was closed before the job finished."""


class Job:
    """One generation request: iterate it for Piece events and a final Done.

    With `deliver`, the engine thread hands each Piece and the Done to it as soon as they are
    made, and iteration yields only what it declined. That spares a thread wake-up per token
    per request (on 2 cores, each one preempts a compute thread that the other waits for).
    `deliver` must never block: it returns False for an event it cannot take now, which then
    goes to the iteration, with every event after it.
    """

    def __init__(self, prompt: Sequence[Item], options: GenerateOptions,
                 deliver: Callable[[Piece | Done], bool] | None = None):
        self.prompt = list(prompt)
        self.options = options
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._deliver = deliver

    def __iter__(self) -> Iterator[Piece | Done]:
        while True:
            event = self._events.get()
            if event is _END:
                return
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Done):
                return

    def cancel(self) -> None:
        """Stop generating (within one step); the iteration ends without a Done."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, event) -> None:
        if self._deliver is not None and isinstance(event, (Piece, Done)):
            if self._deliver(event):
                if isinstance(event, Done):
                    self._events.put(_END)
                return
            self._deliver = None  # in order from here on: everything through the iteration
        self._events.put(event)
