"""Which exceptions mean "the user gave us something bad" (printed as one line, not a traceback)."""

from __future__ import annotations

import os


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause: bad files, bad models, bad options, a full context.

    GGUFError, ModelError and BackendError are ValueErrors; OSError covers missing or
    unreadable files. With OLLAMA_DEBUG set nothing is caught, so a developer sees tracebacks.
    """
    if os.environ.get("OLLAMA_DEBUG", "") not in ("", "0", "false"):
        return ()
    from pollama.kvcache import CacheFullError

    return (ValueError, OSError, CacheFullError, MemoryError)
