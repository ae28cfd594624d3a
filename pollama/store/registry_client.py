"""HTTP to a Docker-distribution (OCI) registry: URLs, redirects, auth and bounded reads.

Everything a registry sends is treated as hostile until checked: redirects are followed
only to http(s) (https -> http only when insecure), credentials never travel to another
host, and every body is read with a limit, so an endless answer cannot fill memory or disk.

Credentials for Basic auth (and for token servers) come from the caller or from
$POLLAMA_REGISTRY_USERNAME / $POLLAMA_REGISTRY_PASSWORD. Ollama has no such variables (it
signs token requests with ~/.ollama/id_ed25519 instead, which pollama also does when no
credentials are given and the token realm is on the registry's host: registry_signing.py),
so they carry pollama's prefix.
"""

from __future__ import annotations

import base64
import json
import platform
import re
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote

import httpx

from pollama import envconfig
from pollama.store.errors import StoreError
from pollama.store.names import ModelName
from pollama.store.registry_signing import default_key_path, signed_token_request

USERNAME_ENV = "POLLAMA_REGISTRY_USERNAME"
PASSWORD_ENV = "POLLAMA_REGISTRY_PASSWORD"
MAX_REDIRECTS = 10
MAX_ERROR_BODY = 4096  # enough for a registry's JSON error; the rest is not read
MAX_TOKEN_BODY = 64 << 10
MB = 1000 * 1000


class RegistryError(StoreError):
    """A registry refused, failed, or sent something unsafe; the message names what and where."""


class RegistryNotFound(RegistryError, LookupError):
    """The registry has no such model or blob (HTTP 404)."""


class TransferCancelled(RegistryError):
    """The caller cancelled the pull or push (partial downloads are kept for a resume)."""


@dataclass(frozen=True)
class TransferSettings:
    """How transfers are cut and retried. Defaults are Ollama's; tests shrink them."""

    parts: int = 16  # a blob is cut into about this many parts, downloaded in parallel
    min_part_size: int = 100 * MB
    max_part_size: int = 1000 * MB
    max_parallel: int = 16  # parts in flight at once per blob
    retries: int = 6  # per part (download) or chunk (upload)
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    max_backoff: float = 30.0
    stall_timeout: float = 30.0  # a part that receives nothing this long is restarted
    connect_timeout: float = 30.0
    progress_interval: float = 0.1  # seconds between progress callbacks of one blob

    def part_size(self, total: int) -> int:
        """Size of each part of a blob of total bytes (the last one may be shorter)."""
        return max(1, min(max(total // max(self.parts, 1), self.min_part_size), self.max_part_size))

    def delay(self, attempt: int) -> float:
        return min(self.backoff * (2**attempt), self.max_backoff)


def credentials_from_env() -> tuple[str, str] | None:
    """(user, password) from $POLLAMA_REGISTRY_USERNAME/_PASSWORD, or None if not both set."""
    return envconfig.registry_credentials()


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer'|'basic'|..., params) of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed response, refusing more than limit bytes."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what}: the registry announced {declared} bytes, more than the {limit} allowed")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"{what}: the registry sent more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_text(response: httpx.Response) -> str:
    """A registry error body, shortened: distribution's {"errors": [{"message"}]} or its text."""
    try:
        body = read_bounded(response, MAX_ERROR_BODY, "error")
    except (RegistryError, httpx.HTTPError):
        return ""
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError, TypeError, RecursionError):
        text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:300]


def _user_agent() -> str:
    from pollama import package_version

    return f"pollama/{package_version()} ({platform.machine().lower()} {platform.system().lower()}) Python/{platform.python_version()}"


class RegistryClient:
    """Requests to the registry of one model name (its host and repository)."""

    def __init__(
        self,
        name: ModelName,
        *,
        insecure: bool = False,
        credentials: tuple[str, str] | None = None,
        settings: TransferSettings | None = None,
        signing_key: Path | None = None,
    ):
        if name.scheme == "http" and not insecure:
            raise RegistryError(f"insecure protocol http for '{name}': use --insecure (insecure=True) to allow it")
        self.name = name
        self.insecure = insecure
        # Ollama's --insecure means plain http to the registry.
        self.scheme = "http" if insecure else "https"
        self.host = name.host
        self.repository = f"{name.namespace}/{name.model}"
        self.base = f"{self.scheme}://{self.host}/v2/{quote(name.namespace)}/{quote(name.model)}"
        self.credentials = credentials if credentials is not None else credentials_from_env()
        self.settings = settings or TransferSettings()
        self.signing_key = signing_key if signing_key is not None else default_key_path()
        s = self.settings
        self.http = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(connect=s.connect_timeout, read=s.stall_timeout, write=s.stall_timeout, pool=None),
            headers={"User-Agent": _user_agent()},
            limits=httpx.Limits(max_connections=max(s.max_parallel, 4) + 4),
        )
        self._auth_lock = threading.Lock()
        self._authorization: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- URLs ---------------------------------------------------------------------------------
    def manifest_url(self) -> str:
        return f"{self.base}/manifests/{quote(self.name.tag)}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/blobs/{digest}"

    def uploads_url(self) -> str:
        return f"{self.base}/blobs/uploads/"

    def is_registry(self, url: httpx.URL) -> bool:
        """Whether url is on the registry itself (where its credentials may go)."""
        return url.scheme == self.scheme and url.netloc.decode("ascii").lower() == self.host.lower()

    def check_url(self, url: httpx.URL, came_from: httpx.URL | None, what: str) -> httpx.URL:
        """url, if the registry may send us there: http(s) only, never https -> http unless insecure."""
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryError(f"{what}: refusing redirect to {str(url)[:200]!r}: only http and https URLs are followed")
        if url.scheme == "http" and not self.insecure:
            origin = f" from {came_from.scheme}" if came_from is not None else ""
            raise RegistryError(f"{what}: refusing redirect{origin} to plain http URL {str(url)[:200]!r} (use --insecure to allow it)")
        return url

    def resolve(self, base: httpx.URL, location: str, what: str) -> httpx.URL:
        """A Location header resolved against base and checked."""
        try:
            url = base.join(location)
        except (httpx.InvalidURL, ValueError):
            raise RegistryError(f"{what}: the registry sent an invalid Location {location[:200]!r}") from None
        return self.check_url(url, base, what)

    # -- requests -----------------------------------------------------------------------------
    def send(
        self,
        method: str,
        url: str | httpx.URL,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content=None,
        follow_redirects: bool = True,
    ) -> httpx.Response:
        """A streamed response (the caller closes it) after redirects and one auth challenge.

        content is bytes or a function returning a fresh iterable of bytes, so that a request
        can be sent again after an auth challenge or a redirect.
        """
        url = self.check_url(httpx.URL(url), None, what)
        authenticated = False
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = dict(headers or {})
            # Credentials and tokens are for the registry only, never for a CDN or other host.
            if self.is_registry(url) and self._authorization:
                request_headers["Authorization"] = self._authorization
            body = content() if callable(content) else content
            try:
                request = self.http.build_request(method, url, headers=request_headers, content=body)
                response = self.http.send(request, stream=True)
            except httpx.TimeoutException as e:
                raise TransientError(f"{what}: {self.host} timed out ({type(e).__name__})") from None
            except httpx.TransportError as e:
                if _tls_failure(e):  # a certificate does not get better by asking again
                    raise RegistryError(f"{what}: TLS with {url.host} failed: {e}") from None
                raise TransientError(f"{what}: could not reach {url.host}: {e or type(e).__name__}") from None
            except httpx.InvalidURL as e:
                # httpx prepares the next request of a redirect even when not following it.
                raise RegistryError(f"{what}: refusing redirect to an unusable URL ({e}): only http and https URLs are followed") from None
            if response.status_code == 401 and self.is_registry(url) and not authenticated:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authenticate(challenge, what)
                authenticated = True
                continue
            if follow_redirects and response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("location", "")
                response.close()
                if not location:
                    raise RegistryError(f"{what}: {self.host} answered {response.status_code} without a Location")
                url = self.resolve(url, location, what)
                if response.status_code == 303:
                    method, content = "GET", None
                continue
            return response
        raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects")

    def fail(self, response: httpx.Response, what: str) -> RegistryError:
        """The error for a response that is not what was asked for (the response is closed)."""
        code = response.status_code
        host = self.host if self.is_registry(response.url) else response.url.host
        text = _error_text(response)
        response.close()
        detail = f": {text}" if text else ""
        if code == 401:
            hint = (
                "the registry refused the credentials"
                if self.credentials
                else f"the registry needs credentials: set {USERNAME_ENV} and {PASSWORD_ENV}"
            )
            return RegistryError(f"{what}: 401 unauthorized by {host}: {hint}{detail}")
        if code == 404:
            return RegistryNotFound(f"{what}: not found on {host}{detail}")
        if code in (408, 425, 429) or code >= 500:
            return TransientError(f"{what}: {host} answered {code}{detail}")
        return RegistryError(f"{what}: {host} answered {code}{detail}")

    def request(self, method: str, url, what: str, *, ok=(200,), limit: int = MAX_ERROR_BODY, **kw) -> tuple[httpx.Response, bytes]:
        """Send, require a status in ok, and read the body (at most limit bytes)."""
        response = self.send(method, url, what, **kw)
        if response.status_code not in ok:
            raise self.fail(response, what)
        with self.receiving(response, what):
            body = b"" if method == "HEAD" else read_bounded(response, limit, what)
        return response, body

    @contextmanager
    def receiving(self, response: httpx.Response, what: str) -> Iterator[None]:
        """Around reading response's body: a stall or a broken connection becomes a TransientError
        (which retrying() tries again), and the response is closed after, read or not."""
        host = response.request.url.host
        try:
            yield
        except httpx.TimeoutException:
            raise TransientError(f"{what}: {host} stalled (nothing received for {self.settings.stall_timeout:g}s)") from None
        except httpx.TransportError as e:
            raise TransientError(f"{what}: connection to {host} failed: {e or type(e).__name__}") from None
        finally:
            response.close()

    def retrying(self, call, cancel: threading.Event | None = None):
        """call(), again after a backoff while it fails with a TransientError (settings.retries times)."""
        for attempt in range(self.settings.retries + 1):
            try:
                return call()
            except TransientError as e:
                if attempt == self.settings.retries:
                    raise RegistryError(f"{e} (gave up after {attempt} retries)") from None
                if (cancel or threading.Event()).wait(self.settings.delay(attempt)):
                    raise TransferCancelled("cancelled") from None
        raise AssertionError("unreachable")

    # -- auth ---------------------------------------------------------------------------------
    def _authenticate(self, challenge: str, what: str) -> None:
        scheme, params = parse_challenge(challenge)
        with self._auth_lock:
            if scheme == "basic":
                if not self.credentials:
                    raise RegistryError(
                        f"{what}: 401 unauthorized by {self.host}: the registry needs credentials: "
                        f"set {USERNAME_ENV} and {PASSWORD_ENV}"
                    )
                self._authorization = _basic(self.credentials)
            elif scheme == "bearer":
                self._authorization = "Bearer " + self._fetch_token(params, what)
            else:
                raise RegistryError(f"{what}: 401 unauthorized by {self.host} (unsupported authentication {challenge[:80]!r})")

    def _fetch_token(self, params: dict[str, str], what: str) -> str:
        realm = params.get("realm", "")
        if not realm:
            raise RegistryError(f"{what}: {self.host} asked for a token without saying where to get it (no realm)")
        try:
            url = httpx.URL(realm)
        except (httpx.InvalidURL, ValueError):
            raise RegistryError(f"{what}: {self.host} sent an invalid token realm {realm[:200]!r}") from None
        self.check_url(url, None, f"{what}: token realm")
        headers = {}
        key = self.signing_key
        if not self.credentials and url.netloc.decode("ascii").lower() == self.host.lower() and key and key.is_file():
            # Ollama's registry: sign the token URL with the user's ed25519 key. Only for a
            # realm on the registry's own host, as Ollama does, so no other host sees it.
            signed, headers["Authorization"] = signed_token_request(realm, params.get("service", ""), params.get("scope", ""), key)
            url = httpx.URL(signed)
        else:
            query = {k: params[k] for k in ("service", "scope") if params.get(k)}
            query["ts"] = str(int(time.time()))
            url = url.copy_merge_params(query)
            if self.credentials:
                # A token server authenticates the user; the registry trusts its tokens. The
                # realm is checked to be http(s); sending credentials to it is what Docker does.
                headers["Authorization"] = _basic(self.credentials)
        try:
            response = self.http.send(self.http.build_request("GET", url, headers=headers), stream=True)
            try:
                if response.status_code != 200:
                    hint = "" if self.credentials else f" (set {USERNAME_ENV} and {PASSWORD_ENV})"
                    raise RegistryError(f"{what}: token server {url.host} answered {response.status_code}{hint}")
                data = read_bounded(response, MAX_TOKEN_BODY, f"{what}: token from {url.host}")
            finally:
                response.close()
        except httpx.HTTPError as e:
            raise RegistryError(f"{what}: token server {url.host} failed: {e or type(e).__name__}") from None
        try:
            body = json.loads(data)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise RegistryError(f"{what}: token server {url.host} sent no token")
        return token


class TransientError(RegistryError):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx or 429."""


def _tls_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _basic(credentials: tuple[str, str]) -> str:
    user, password = credentials
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
