"""Run the server on $OLLAMA_HOST until interrupted."""

from __future__ import annotations

import logging
import socket

from pollama.server.config import ServerConfig, parse_host


def serve(host: str | None = None) -> int:
    """Serve the API on host (default $OLLAMA_HOST, else 127.0.0.1:11434); returns on Ctrl+C."""
    import uvicorn

    from pollama.errors import debug_enabled
    from pollama.server.app import create_app

    where = parse_host(host)
    level = logging.DEBUG if debug_enabled() else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pollama.envconfig import api_keys
    from pollama.server.security import bound_to_loopback

    loopback = bound_to_loopback(where.host)
    if not loopback and not api_keys():
        # As Ollama, this is allowed (a LAN box behind a firewall, a container): but anyone who
        # reaches the port can run, create, pull, push and delete models.
        logging.getLogger(__name__).warning(
            "listening on %s, beyond this machine, with no API key: anyone who can reach it may use every route; "
            "set POLLAMA_API_KEYS (see docs/security.md)", where.host)
    app = create_app(ServerConfig.from_env(), host_check=loopback)
    config = uvicorn.Config(
        app, host=where.host, port=where.port, log_level="debug" if debug_enabled() else "warning",
        access_log=debug_enabled(), timeout_graceful_shutdown=5, lifespan="on",
    )
    server = uvicorn.Server(config)
    sock = _listen(where.host, where.port)
    logging.getLogger(__name__).info("Listening on %s:%d (version %s)", where.host, where.port, app.version)
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
