"""Who may call the server: CORS origins and the Host check, as Ollama allows them.

Browsers may call from localhost pages, from the desktop-app schemes Ollama lists, from
browser extensions, and from the origins in OLLAMA_ORIGINS. When the server listens on a
loopback address, requests must also name a local Host (a page on some remote domain that
resolves to 127.0.0.1, DNS rebinding, is refused with 403).
"""

from __future__ import annotations

import ipaddress
import re
import socket

from starlette.middleware.cors import CORSMiddleware

from pollama.server.config import env

ALLOWED_HEADERS = ["Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
                   "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
                   "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                   "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime",
                   "x-stainless-runtime-version", "x-stainless-timeout"]


def origin_regex() -> str:
    """One regular expression for every allowed Origin."""
    patterns = [
        r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?",
        r"(app|file|tauri|vscode-webview|vscode-file)://.*",
        r"(chrome|moz|safari-web)-extension://.*",
    ]
    for origin in filter(None, (o.strip() for o in env("OLLAMA_ORIGINS").split(","))):
        patterns.append(".*" if origin == "*" else ".*".join(re.escape(part) for part in origin.split("*")))
    return "^(" + "|".join(patterns) + ")$"


def add_cors(app) -> None:
    app.add_middleware(CORSMiddleware, allow_origin_regex=origin_regex(), allow_methods=["*"],
                       allow_headers=ALLOWED_HEADERS, allow_credentials=False)


def _is_local_host(host: str) -> bool:
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if not host:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local
    if host in ("localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


class HostCheck:
    """ASGI middleware: 403 for a request whose Host is not local (only when bound to loopback)."""

    def __init__(self, app, enabled: bool):
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope, receive, send) -> None:
        if self.enabled and scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not _is_local_host(host):
                body = b'{"error":"forbidden: the Host header is not a local address"}'
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def bound_to_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
