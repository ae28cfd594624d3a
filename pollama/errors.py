"""Which exceptions mean "the user gave us something bad" (printed as one line, not a traceback)."""

from __future__ import annotations

import os


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause: bad files, bad models, bad options, a full context.

    GGUFError, ModelError and BackendError are ValueErrors; OSError covers missing or
    unreadable files. With OLLAMA_DEBUG set nothing is caught, so a developer sees tracebacks.
    """
    if debug_enabled():
        return ()
    from pollama.kvcache import CacheFullError

    return (ValueError, OSError, CacheFullError, MemoryError)


def debug_enabled() -> bool:
    """OLLAMA_DEBUG is set (to anything but empty, 0 or false)."""
    return os.environ.get("OLLAMA_DEBUG", "").strip().lower() not in ("", "0", "false")
