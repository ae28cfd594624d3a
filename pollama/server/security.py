"""Who may call the server: origins, the Host check and API keys (docs/security.md).

Browsers may call from localhost pages, from the desktop-app schemes Ollama lists, from
browser extensions, and from the origins in OLLAMA_ORIGINS; a request from any other page is
refused with 403 before it reaches a route, as Ollama does. Omitting the CORS headers alone
is not enough: a page's "simple" POST (text/plain, no preflight) would still run, the page
only could not read the answer. When the server listens on a loopback address, requests
must also name a local Host (a page on some remote domain that resolves to 127.0.0.1, DNS
rebinding, is refused with 403). With API keys configured, every route but `/` and
`/api/version` needs `Authorization: Bearer KEY` (or `x-api-key: KEY`, as Anthropic's clients send it).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket

from starlette.middleware.cors import CORSMiddleware

from pollama.envconfig import api_keys, origins

log = logging.getLogger(__name__)

ALLOWED_HEADERS = ["Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
                   "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
                   "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                   "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime",
                   "x-stainless-runtime-version", "x-stainless-timeout",
                   # Anthropic's SDK (in a browser it also sends the direct-access opt-in).
                   "x-api-key", "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access"]


def origin_regex() -> str:
    """One regular expression for every allowed Origin."""
    patterns = [
        r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?",
        r"(app|file|tauri|vscode-webview|vscode-file)://.*",
        r"(chrome|moz|safari-web)-extension://.*",
    ]
    for origin in origins():
        patterns.append(".*" if origin == "*" else ".*".join(re.escape(part) for part in origin.split("*")))
    return "^(" + "|".join(patterns) + ")$"


def add_security(app, *, host_check: bool) -> None:
    """The checks in the order they run: Host, then Origin, then CORS headers, then the API key.

    The key is checked inside CORS so that an allowed page can read a 401, and after it so
    that a browser's preflight (which never carries credentials) is answered.
    """
    keys = api_keys()
    if keys:
        app.add_middleware(APIKeyCheck, keys=keys)
    app.add_middleware(CORSMiddleware, allow_origin_regex=origin_regex(), allow_methods=["*"],
                       allow_headers=ALLOWED_HEADERS, allow_credentials=False)
    app.add_middleware(OriginCheck, allowed=re.compile(origin_regex()))
    app.add_middleware(HostCheck, enabled=host_check)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _refuse(send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class OriginCheck:
    """ASGI middleware: 403 for a request whose Origin is not allowed, before any route runs.

    As Ollama (gin's CORS handler): no Origin, or an Origin that is the request's own
    scheme and Host (a same-origin fetch), is not a cross-site request and passes.
    """

    def __init__(self, app, allowed: re.Pattern):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            origin = _header(scope, b"origin")
            preflight = scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method") is not None
            if origin is not None and not self._allowed(origin, _header(scope, b"host") or ""):
                log.warning("refused a request to %s from origin %r (see OLLAMA_ORIGINS)", scope.get("path"), origin)
                if preflight:  # gin-contrib/cors (Ollama's): a bare 403, no body
                    await send({"type": "http.response.start", "status": 403, "headers": [(b"content-length", b"0")]})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await _refuse(send, 403, b'{"error":"forbidden: this origin may not call the server (see OLLAMA_ORIGINS)"}')
                return
            if origin is not None and preflight:
                await self.app(scope, receive, _no_content(send))
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if host and origin in (f"http://{host}", f"https://{host}"):
            return True
        return self.allowed.fullmatch(origin) is not None


def _no_content(send):
    """An answered preflight as gin-contrib/cors gives it: 204 and no body (Starlette's CORS
    middleware answers 200 "OK")."""
    async def send_204(message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            message = {**message, "status": 204, "headers": headers}
        elif message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_204


# Requests anyone may make with keys on: the liveness checks clients probe before anything else.
OPEN_PATHS = frozenset({"/", "/api/version"})


class APIKeyCheck:
    """ASGI middleware: 401 unless the request carries `Authorization: Bearer KEY` (or
    `x-api-key: KEY`) for a known key."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS and not self._authorized(scope):
            path = scope.get("path") or ""
            if path.startswith("/v1/messages"):  # Anthropic's shape, and its SDK's header
                body = (b'{"type":"error","error":{"type":"authentication_error",'
                        b'"message":"invalid or missing API key: send x-api-key: KEY or Authorization: Bearer KEY"}}')
            elif path.startswith("/v1/"):  # OpenAI's shape for a bad key
                body = (b'{"error":{"message":"invalid or missing API key: send Authorization: Bearer KEY",'
                        b'"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}')
            else:
                body = b'{"error":"unauthorized: invalid or missing API key (send Authorization: Bearer KEY)"}'
            await _refuse(send, 401, body, ((b"www-authenticate", b"Bearer"),))
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        value = (_header(scope, b"authorization") or "").strip()
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip().encode("latin-1")
        elif _header(scope, b"x-api-key") is not None:  # how Anthropic's clients send the key
            given = _header(scope, b"x-api-key").strip().encode("latin-1")
        else:
            return False
        # Compare against every key in constant time, so timing tells nothing of a key.
        return any([hmac.compare_digest(given, key) for key in self.keys])  # noqa: C419 - no short circuit


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
        if self.enabled and scope["type"] == "http" and not _is_local_host(_header(scope, b"host") or ""):
            await _refuse(send, 403, b'{"error":"forbidden: the Host header is not a local address"}')
            return
        await self.app(scope, receive, send)


def bound_to_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
