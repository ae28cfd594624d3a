"""Commands that talk to a running server: serve, ps, stop, and run when a server answers."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

from pollama.cli.client import Client, ServerError
from pollama.cli.models import human_bytes


def cmd_serve(args: argparse.Namespace) -> int:
    from pollama.server.serve import serve

    return serve()


def until(expires_at: str) -> str:
    """ps's UNTIL column: "Forever", "Stopping...", "4 minutes from now"."""
    try:
        then = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    seconds = (then - datetime.now(timezone.utc)).total_seconds()
    if seconds > 100 * 365 * 86400:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{'About a' if n == 1 and unit != 'hour' else 'About an' if n == 1 else n} {unit}{'s' if n != 1 else ''} from now"
    return "Less than a minute from now" if seconds >= 1 else "Less than a second from now"


def cmd_ps(args: argparse.Namespace) -> int:
    with Client() as client:
        models = client.request("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        rows.append([m["name"], m.get("digest", "")[:12], human_bytes(m.get("size", 0)), "100% CPU",
                     str(m.get("context_length", "")), until(m.get("expires_at", ""))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with Client() as client:
        client.request("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


def run_remote(client: Client, args: argparse.Namespace, prompt: str, options: dict) -> int:
    """`run MODEL PROMPT` through the server's /api/chat, printing the answer as it streams."""
    body: dict = {"model": args.model, "messages": [{"role": "user", "content": prompt}], "options": options}
    if getattr(args, "keepalive", None):
        body["keep_alive"] = args.keepalive
    if getattr(args, "format", None):
        body["format"] = args.format
    started = time.perf_counter_ns()
    final = None
    for message in client.stream("/api/chat", body):
        if message.get("done"):
            final = message
        else:
            sys.stdout.write(message["message"]["content"])
            sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose and final is not None:
        from pollama.cli.main import print_timings

        print_timings(final, final.get("total_duration") or time.perf_counter_ns() - started, final.get("load_duration", 0))
    return 0


__all__ = ["cmd_ps", "cmd_serve", "cmd_stop", "run_remote", "ServerError"]
