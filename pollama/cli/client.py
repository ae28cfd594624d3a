"""The CLI's HTTP client for a pollama (or Ollama) server at $OLLAMA_HOST."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from pollama.envconfig import client_api_key
from pollama.server.config import parse_host


class ServerError(Exception):
    """The server answered with an error, or could not be reached; the message is for the user."""


class Client:
    """Blocking calls to the API; streamed answers are iterated line by line."""

    def __init__(self, base_url: str | None = None, timeout: float | None = None, socket_path: str | None = None):
        """base_url: default $OLLAMA_HOST's; socket_path: a Unix socket to reach it by instead
        (the server this process starts for itself, pollama.server.serve.serve_privately)."""
        self.base_url = base_url or ("http://localhost" if socket_path else parse_host().url)
        key = client_api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.HTTPTransport(uds=socket_path) if socket_path else None
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=5.0), headers=headers,
                                 transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_running(self) -> bool:
        """Whether a server answers at the base URL (quickly: a missing server is the common case)."""
        try:
            return httpx.get(self.base_url + "/", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _unreachable(self) -> ServerError:
        return ServerError(f"could not connect to a server at {self.base_url}: start one with 'pollama serve'")

    @staticmethod
    def _error_of(response: httpx.Response) -> ServerError:
        try:
            message = response.json().get("error")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            message = None
        if isinstance(message, dict):  # OpenAI's shape
            message = message.get("message")
        return ServerError(message or f"server answered {response.status_code}")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON answer (None for an empty body)."""
        try:
            response = self.http.request(method, path, json=body)
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.HTTPError as e:
            raise ServerError(f"request to {self.base_url}{path} failed: {e}") from None
        if response.status_code >= 400:
            raise self._error_of(response)
        return response.json() if response.content else None

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The NDJSON objects of a streamed answer; an {"error"} line raises ServerError."""
        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error_of(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise ServerError(message["error"])
                    yield message
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.HTTPError as e:
            raise ServerError(f"request to {self.base_url}{path} failed: {e}") from None
