"""`pollama pull` and `pollama push`: their arguments, and the progress bars drawn as Ollama's
CLI draws them from the server's /api/pull and /api/push streams (cli/remote.py).

Credentials for registries with Basic auth or a token server come from
$POLLAMA_REGISTRY_USERNAME and $POLLAMA_REGISTRY_PASSWORD, in the server's environment (the
CLI's own, when the command starts the server in its process).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from pollama.cli.models import human_bytes

BAR_WIDTH = 40
REDRAW_SECONDS = 0.1


def add_registry_parsers(subparsers) -> None:
    """Register `pull NAME [--insecure]` and `push NAME [--insecure]` (main.py sets what they run)."""
    pull = subparsers.add_parser("pull", help="pull a model from a registry")
    pull.add_argument("model")
    pull.add_argument("--insecure", action="store_true", help="use plain http (for a local registry)")
    push = subparsers.add_parser("push", help="push a model to a registry")
    push.add_argument("model")
    push.add_argument("--insecure", action="store_true", help="use plain http (for a local registry)")


class ProgressPrinter:
    """Turns Ollama's progress dicts into lines: one per status, a bar for byte counts.

    On a terminal the current line is redrawn in place; elsewhere each line is printed once,
    when its status ends, so logs stay readable.
    """

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.current: str | None = None
        self.line = ""
        self.last_draw = 0.0
        self.started = time.monotonic()
        self.first_completed: int | None = None
        self.lock = threading.Lock()

    def __call__(self, update: dict[str, Any]) -> None:
        with self.lock:
            status = update.get("status", "")
            if status != self.current:
                self._finish()
                self.current, self.started, self.first_completed = status, time.monotonic(), None
            self.line = self._render(update)
            now = time.monotonic()
            if self.tty and (now - self.last_draw >= REDRAW_SECONDS or update.get("completed") == update.get("total")):
                self.out.write("\r" + self.line + "\x1b[K")
                self.out.flush()
                self.last_draw = now

    def _render(self, update: dict[str, Any]) -> str:
        status = update.get("status", "")
        total, completed = update.get("total"), update.get("completed")
        if not total:
            return status
        completed = completed or 0
        if self.first_completed is None:
            self.first_completed = completed  # a resumed pull starts with bytes already there
        fraction = min(completed / total, 1.0)
        filled = int(fraction * BAR_WIDTH)
        bar = "█" * filled + " " * (BAR_WIDTH - filled)
        head = f"{status}... {int(fraction * 100):3d}% ▕{bar}▏"
        if completed >= total:
            return f"{head} {human_bytes(total):>7}"
        elapsed = time.monotonic() - self.started
        rate = (completed - self.first_completed) / elapsed if elapsed > 0.5 else 0
        tail = f" {human_bytes(completed)}/{human_bytes(total)}"
        if rate > 0:
            tail += f"  {human_bytes(int(rate))}/s  {_eta((total - completed) / rate)}"
        return head + tail

    def _finish(self) -> None:
        if self.current is None:
            return
        if self.tty:
            self.out.write("\r" + self.line + "\x1b[K\n")
        else:
            self.out.write(self.line + "\n")
        self.out.flush()

    def close(self) -> None:
        """End the last line."""
        with self.lock:
            self._finish()
            self.current = None


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def show_transfer(transfer: Callable[[ProgressPrinter], object]) -> int:
    """Run transfer(printer) drawing its progress; on Ctrl+C say how to resume and return 130
    (the shell's code for an interrupt). Leaving the stream is what stops the server's transfer."""
    printer = ProgressPrinter()
    try:
        transfer(printer)
    except KeyboardInterrupt:
        printer.close()
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        printer.close()
    return 0
