"""The errors a user can cause, and which exceptions are printed as one line, not a traceback.

This module imports nothing of pollama's but envconfig, so every layer can raise these.
"""

from __future__ import annotations

from pollama import envconfig


class ModelError(ValueError):
    """A model file that does not fit its architecture (missing tensor or key, bad shape)."""


class CacheFullError(RuntimeError):
    """No free cells for the step's tokens (the context is full)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause: bad files, bad models, bad options, a full context.

    GGUFError, ModelError and BackendError are ValueErrors; OSError covers missing or
    unreadable files. With OLLAMA_DEBUG set nothing is caught, so a developer sees tracebacks.
    """
    if debug_enabled():
        return ()
    return (ValueError, OSError, CacheFullError, MemoryError)


def debug_enabled() -> bool:
    """OLLAMA_DEBUG is on (envconfig.debug: a true value or a positive level)."""
    return envconfig.debug()
