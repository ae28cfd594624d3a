"""`serve`'s log lines on stderr, shaped as Ollama's server writes them.

Ollama logs through Go's log/slog text handler (`time=... level=INFO source=file.go:123
msg="Listening on 127.0.0.1:11434 (version 0.32.15)"`) and gin's request logger prints one
line per request (`[GIN] 2026/12/08 - 01:30:46 | 200 |    1.234567ms |       127.0.0.1 | POST
"/api/chat"`). Gin writes those to stdout; pollama keeps every log line on stderr, so that
stdout stays free. The shapes follow gin's defaultLogFormatter (colours off) and slog's
TextHandler; the code is ours.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime

# slog's level names.
_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}


def _slog_value(text: str) -> str:
    """A value as slog's text handler writes it: bare when it is one plain word, else quoted."""
    if text and all(c.isprintable() and c not in ' ="\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class SlogFormatter(logging.Formatter):
    """Records as slog's text handler writes them (Ollama's server log)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        when = when.replace("+00:00", "Z")  # Go writes UTC as Z
        level = _LEVELS.get(record.levelname, record.levelname)
        line = (f"time={when} level={level} source={record.filename}:{record.lineno} "
                f"msg={_slog_value(record.getMessage())}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 0s, 850ns, 12.5µs, 1.234567ms, 2.5s, 1m30.25s, 2h0m5s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def fraction(value: int, digits: int) -> str:
        whole, frac = divmod(value, 10**digits)
        text = str(frac).rjust(digits, "0").rstrip("0")
        return f"{whole}.{text}" if text else str(whole)

    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = fraction(rest, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    return f"{sign}{minutes}m{seconds}" if minutes else sign + seconds


def request_line(when: float, status: int, latency_ns: int, client: str, method: str, path: str) -> str:
    """One request as gin's default logger prints it (colours off)."""
    if latency_ns > 60 * 10**9:  # gin truncates a latency over a minute to whole seconds
        latency_ns -= latency_ns % 10**9
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S", time.localtime(when))
    return (f"[GIN] {stamp} | {status:3d} | {go_duration(latency_ns):>13} | {client:>15} | "
            f"{method:<7} {json.dumps(path, ensure_ascii=False)}")


class RequestLog:
    """ASGI middleware: a gin line on stderr when each request's answer is finished (a stream
    at its end, as gin's logger runs after the handler returns)."""

    def __init__(self, app, stream=None):
        self.app = app
        self.stream = stream

    def __getattr__(self, name):  # the wrapped app's state, routes, ...
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_wall, started = time.time(), time.perf_counter_ns()
        status = 500
        logged = False
        path = scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        client = (scope.get("client") or ("", 0))[0]

        def log() -> None:
            nonlocal logged
            if not logged:
                logged = True
                line = request_line(started_wall, status, time.perf_counter_ns() - started, client, scope.get("method", ""), path)
                out = self.stream or sys.stderr
                out.write(line + "\n")
                out.flush()

        async def logging_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log()

        try:
            await self.app(scope, receive, logging_send)
        finally:
            log()
