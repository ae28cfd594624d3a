"""Running the `pollama` command in a real process, and checking its one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def pollama(*args: str, stdin: str = "", timeout: float = 120, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run `pollama ARGS` as a user would, with text stdin (and extra environment); the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "pollama.cli.main", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A non-zero exit with exactly one stderr line, 'Error: ...', containing each needle."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_compare(*argv: str) -> int:
    """`pollama compare ARGV` in this process (its output goes to pytest's capsys); the exit code."""
    import argparse

    from pollama.cli.compare import add_compare_parser

    parser = argparse.ArgumentParser(prog="pollama")
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", *argv])
    return args.func(args)


def dead_host() -> str:
    """host:port where nothing listens (the port was free a moment ago): a command given it as
    OLLAMA_HOST finds no server and runs in the one it starts in its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def no_server_note(host: str, what: str) -> str:
    """The one stderr line a command prints when no server answers at `host` and it runs `what`
    ("the model", "show on the store", ...) in its own process."""
    return (f"Warning: could not connect to a pollama server at http://{host}; "
            f"running {what} in this process (start one with 'pollama serve')\n")
