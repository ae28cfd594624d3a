"""Errors the API answers with a status code and Ollama's body {"error": "..."}."""

from __future__ import annotations


class APIError(Exception):
    """A request that fails with `status` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RunnerError(APIError):
    """The model's runner process failed the request (500), e.g. because it died."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(status, message)
