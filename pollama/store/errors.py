"""Errors of the model store: each names the model, blob or file at fault."""

from __future__ import annotations


class StoreError(ValueError):
    """Something in the model store is wrong or was asked for wrongly.

    A ValueError so that the CLI prints it as one line (see pollama.errors.user_errors).
    """


class InvalidName(StoreError):
    """A model name that breaks Ollama's name grammar."""


class ModelNotFound(StoreError, LookupError):
    """No manifest exists for the model name."""

    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")
        self.name = name


class DigestMismatch(StoreError):
    """Bytes whose sha256 is not the digest they are stored or announced under."""
