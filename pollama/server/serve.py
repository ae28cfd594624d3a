"""Run the server on $OLLAMA_HOST until interrupted."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pollama.server.config import ServerConfig, parse_host


def serve(host: str | None = None) -> int:
    """Serve the API on host (default $OLLAMA_HOST, else 127.0.0.1:11434); returns on Ctrl+C."""
    import uvicorn

    from pollama.errors import debug_enabled
    from pollama.server.app import create_app

    where = parse_host(host)
    from pollama.server.logs import RequestLog, SlogFormatter

    level = logging.DEBUG if debug_enabled() else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SlogFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    from pollama.envconfig import api_keys
    from pollama.server.security import bound_to_loopback

    loopback = bound_to_loopback(where.host)
    if not loopback and not api_keys():
        # As Ollama, this is allowed (a LAN box behind a firewall, a container): but anyone who
        # reaches the port can run, create, pull, push and delete models.
        logging.getLogger(__name__).warning(
            "listening on %s, beyond this machine, with no API key: anyone who can reach it may use every route; "
            "set POLLAMA_API_KEYS (see docs/security.md)", where.host)
    from pollama.envconfig import no_prune

    if not no_prune():
        from pollama.store.store import Store

        Store().prune()  # as Ollama's server at start: unused blobs and stale downloads go
    app = create_app(ServerConfig.from_env(), host_check=loopback)
    # Each request is one gin-style line (RequestLog), so uvicorn's own access log stays off.
    config = uvicorn.Config(
        RequestLog(app), host=where.host, port=where.port, log_level="debug" if debug_enabled() else "warning",
        access_log=False, timeout_graceful_shutdown=5, lifespan="on", log_config=None,
    )
    server = uvicorn.Server(config)
    sock = _listen(where.host, where.port)
    shown = f"[{where.host}]" if ":" in where.host else where.host  # Go's net.Addr form
    logging.getLogger(__name__).info("Listening on %s:%d (version %s)", shown, where.port, app.version)
    server.run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The bound listening socket; a failure is one clear line, as Ollama's `listen tcp ...`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"listen tcp {host}:{port}: bind: {e.strerror or e}") from None
    sock.set_inheritable(False)
    return sock


@contextlib.contextmanager
def serve_privately(config: ServerConfig) -> Iterator[Path]:
    """The server's own app (routes, scheduler, runner processes) in a thread of this process,
    for one CLI command when no server answers: it listens on a Unix socket in a new directory
    that only this user may enter, so no network client and no other user can reach it. Yields
    the socket's path; on leaving, the server stops and its runners with it, and the files
    uploaded to it (a create's GGUF or checkpoint) that no model kept are deleted: no later
    server start prunes them when every command runs this way."""
    import shutil
    import tempfile
    import threading
    import time

    import uvicorn

    from pollama.server.app import create_app

    folder = Path(tempfile.mkdtemp(prefix="pollama-cli-"))  # mode 0700
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(folder / "server.sock"))
        sock.set_inheritable(False)  # runner processes must not hold it open
        app = create_app(config, host_check=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="on",
                                               log_config=None, timeout_graceful_shutdown=5))
        # Signals stay with the CLI (uvicorn installs no handlers off the main thread): Ctrl+C
        # ends the command, and leaving this block stops the server.
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="pollama-server", daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the server in this process did not start")
                time.sleep(0.005)
            yield folder / "server.sock"
        finally:
            server.should_exit = True
            thread.join()
            state = app.state.pollama
            if state.uploads:
                state.store.delete_unreferenced_blobs(state.uploads)
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
