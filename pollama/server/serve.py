"""Run the server on $OLLAMA_HOST until interrupted."""

from __future__ import annotations

import logging
import socket
import sys

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
