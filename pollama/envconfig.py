"""Every OLLAMA_* and POLLAMA_* environment variable, read as Ollama's envconfig reads them, and
the runtime defaults the layers share.

A value is trimmed of spaces, then of quotes (OLLAMA_FLASH_ATTENTION="1" in a unit file or a
compose file means 1). A boolean follows Go's strconv.ParseBool: 1, t, T, TRUE, true, True and
0, f, F, FALSE, false, False; any other non-empty value is true, as Ollama's BoolWithDefault has
it (so "no" and "off" are true there too). Numbers that do not parse are ignored with a warning.
Each setting is read when asked for, so a test (or a runner process) sees the current
environment. This module imports nothing of pollama's: every layer may use it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Runtime defaults, the same everywhere (Ollama's and llama.cpp's).
DEFAULT_NUM_CTX = 4096  # a model's context when neither OLLAMA_CONTEXT_LENGTH nor num_ctx says
DEFAULT_NUM_BATCH = 512  # tokens a forward pass of prefill takes at most
DEFAULT_MAX_QUEUE = 512  # requests waiting for a runner

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def var(name: str) -> str:
    """The variable trimmed of spaces, then of quotes (Ollama's envconfig.Var); "" when unset."""
    return os.environ.get(name, "").strip().strip("\"'")


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: True, False, or None for anything else."""
    return True if text in _TRUE else False if text in _FALSE else None


def boolean(name: str, default: bool = False) -> bool:
    """A flag: `default` when unset or empty, else ParseBool's answer, true when it has none."""
    text = var(name)
    if not text:
        return default
    value = parse_bool(text)
    return True if value is None else value


def uint(name: str, default: int) -> int:
    """A non-negative integer (Go's ParseUint: digits only); `default` when unset or not one."""
    text = var(name)
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        log.warning("invalid environment variable %s=%r, using default %d", name, text, default)
        return default
    return int(text)


def integer(name: str, default: int) -> int:
    """An integer that may be negative (keep-alive seconds); `default` when unset or not one."""
    text = var(name)
    try:
        return int(text) if text else default
    except ValueError:
        log.warning("invalid environment variable %s=%r, using default %d", name, text, default)
        return default


# -- the settings ---------------------------------------------------------------------------------

def debug() -> bool:
    """OLLAMA_DEBUG: a true value or a positive level (2 is Ollama's trace); library logs, full
    tracebacks, each forward pass's recorded tensors."""
    text = var("OLLAMA_DEBUG")
    if parse_bool(text):
        return True
    try:
        return int(text) > 0
    except ValueError:
        return False


def flash_attention() -> bool:
    """OLLAMA_FLASH_ATTENTION: unset means on, as llama.cpp's "auto" is on the CPU (ggml's fused
    kernel: prefill 10-30% faster, decode at least as fast, no score matrix in memory); a false
    value ("0", "false") turns it off, for llama.cpp's other path op for op."""
    return boolean("OLLAMA_FLASH_ATTENTION", True)


def context_length() -> int:
    """OLLAMA_CONTEXT_LENGTH: a model's context when its options do not say; 0 or unset means
    DEFAULT_NUM_CTX."""
    return uint("OLLAMA_CONTEXT_LENGTH", 0) or DEFAULT_NUM_CTX


def kv_cache_type() -> str:
    """OLLAMA_KV_CACHE_TYPE, lower-cased; "" when unset (the runner's f16)."""
    return var("OLLAMA_KV_CACHE_TYPE").lower()


def exact_gelu() -> bool:
    """POLLAMA_EXACT_GELU: ggml computes GELU from its formula in float32 rather than from
    llama.cpp's F16 table (transformers' numbers, at a small cost in speed)."""
    return boolean("POLLAMA_EXACT_GELU")


def draft_ignore_cost() -> bool:
    """POLLAMA_DRAFT_IGNORE_COST: speculative decoding drafts as if a step with drafts cost no
    more than a plain step (every guess the acceptance rate allows is verified): to measure
    how often a draft model or prompt lookup is right, not for speed."""
    return boolean("POLLAMA_DRAFT_IGNORE_COST")


def no_history() -> bool:
    """OLLAMA_NOHISTORY: the interactive chat keeps no readline history."""
    return boolean("OLLAMA_NOHISTORY")


def no_cloud() -> bool:
    """OLLAMA_NO_CLOUD: Ollama's cloud (remote models, web search) is off (/api/status says so)."""
    return boolean("OLLAMA_NO_CLOUD")


def no_prune() -> bool:
    """OLLAMA_NOPRUNE: `serve` does not delete unused blobs at start, nor a pull the blobs the
    model no longer uses."""
    return boolean("OLLAMA_NOPRUNE")


def models_dir() -> Path:
    """OLLAMA_MODELS, else ~/.ollama/models: the model store."""
    value = var("OLLAMA_MODELS")
    return Path(value) if value else Path.home() / ".ollama" / "models"


def cache_dir() -> Path:
    """POLLAMA_CACHE, else ~/.cache/pollama: where multi-part models from PyPI are assembled."""
    value = var("POLLAMA_CACHE")
    return Path(value) if value else Path.home() / ".cache" / "pollama"


def arch_path() -> list[str]:
    """POLLAMA_ARCH_PATH: directories of architecture folders besides pollama/models (os.pathsep-separated)."""
    return [p for p in var("POLLAMA_ARCH_PATH").split(os.pathsep) if p.strip()]


def ggml_lib_dir() -> str:
    """POLLAMA_GGML_LIB_DIR: the ggml build to load instead of the one setup.sh made ("" when unset)."""
    return var("POLLAMA_GGML_LIB_DIR")


def host() -> str:
    """OLLAMA_HOST as written ([scheme://]host[:port]); server/config.py parses it."""
    return var("OLLAMA_HOST")


def origins() -> list[str]:
    """OLLAMA_ORIGINS: the browser origins allowed besides Ollama's own, comma separated."""
    return [o.strip() for o in var("OLLAMA_ORIGINS").split(",") if o.strip()]


def api_keys() -> list[str]:
    """The keys the server accepts (none: no key needed): POLLAMA_API_KEYS, comma separated,
    and OLLAMA_API_KEY."""
    keys = [k.strip() for k in var("POLLAMA_API_KEYS").split(",")] + [var("OLLAMA_API_KEY")]
    return list(dict.fromkeys(k for k in keys if k))


def client_api_key() -> str | None:
    """The key a client sends: OLLAMA_API_KEY, else the first of POLLAMA_API_KEYS."""
    keys = api_keys()
    return var("OLLAMA_API_KEY") or (keys[0] if keys else None)


def registry_credentials() -> tuple[str, str] | None:
    """(user, password) from POLLAMA_REGISTRY_USERNAME and _PASSWORD, or None unless both are set.
    Taken as written: a password may begin or end with a space or a quote."""
    user, password = os.environ.get("POLLAMA_REGISTRY_USERNAME", ""), os.environ.get("POLLAMA_REGISTRY_PASSWORD", "")
    return (user, password) if user and password else None
