"""The server's settings from Ollama's environment variables (read by envconfig, as Ollama
reads them): OLLAMA_HOST's address, keep-alive durations, the scheduler's limits."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from pollama import envconfig
from pollama.runner.speculative import DEFAULT_DRAFT_NUM_PREDICT

log = logging.getLogger(__name__)

DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 5 * 60.0
FOREVER = math.inf  # a negative keep_alive: never unload
MAX_KEEP_ALIVE = 100 * 365 * 86400.0  # seconds; anything longer is forever


@dataclass(frozen=True)
class Host:
    """Where the server listens (and where clients connect)."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL a client uses: 0.0.0.0 and :: mean this machine."""
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


def parse_host(value: str | None = None) -> Host:
    """OLLAMA_HOST: [scheme://]host[:port][/path]; default 127.0.0.1:11434.

    An explicit http:// defaults to port 80 and https:// to 443, as in Ollama; a bad port
    falls back to the default.
    """
    text = (envconfig.host() if value is None else value.strip().strip("\"'")).strip()
    scheme, default_port = "http", DEFAULT_PORT
    if "://" in text:
        scheme, text = text.split("://", 1)
        scheme = scheme.lower() or "http"
        default_port = 443 if scheme == "https" else 80
    text = text.split("/", 1)[0]
    host, port_text = text, ""
    if text.startswith("["):  # [::1]:port
        end = text.find("]")
        host, port_text = text[1:end], text[end + 2 :] if text[end + 1 : end + 2] == ":" else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        port = int(port_text) if port_text else default_port
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        log.warning("invalid port in OLLAMA_HOST %r; using %d", text, default_port)
        port = default_port
    if host == "" and not text:
        host = "127.0.0.1"
    return Host(scheme, host or "0.0.0.0", port)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("5m", "1h30m", "-1s", "300ms", "0"); ValueError if not one."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_keep_alive(value: object) -> float:
    """A keep_alive value in seconds: a number of seconds or a duration string; negative is forever.

    ValueError names what was wrong.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}: give seconds or a duration such as \"5m\"")  # noqa: TRY004 - a 400 to the client
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)  # "300" means seconds, as OLLAMA_KEEP_ALIVE=300 does
        except ValueError:
            seconds = parse_go_duration(text)
    else:
        raise ValueError(f"invalid keep_alive {value!r}: give seconds or a duration such as \"5m\"")  # noqa: TRY004 - a 400 to the client
    if math.isnan(seconds):
        raise ValueError("invalid keep_alive: NaN")
    # Past what a timer and a date can hold (Go's Duration overflows there too): forever.
    return FOREVER if seconds < 0 or seconds > MAX_KEEP_ALIVE else seconds


@dataclass(frozen=True)
class ServerConfig:
    """The scheduler's settings (OLLAMA_* variables)."""

    keep_alive: float = DEFAULT_KEEP_ALIVE
    max_loaded_models: int = 3
    num_parallel: int = 1
    max_queue: int = envconfig.DEFAULT_MAX_QUEUE
    context_length: int = envconfig.DEFAULT_NUM_CTX
    load_timeout: float = 300.0
    draft_num_predict: int = DEFAULT_DRAFT_NUM_PREDICT  # the option's default (0: no speculative decoding)
    backend: str = "ggml"  # what runners compute on: "ggml", or "torch" (the reference, for `run --backend torch`)
    # A model name that is the path of a GGUF file loads that file. Only the CLI's private
    # server (pollama.server.serve.serve_privately, for `run FILE`) does this: a served API
    # never reads a file its client names.
    model_files: bool = False

    @classmethod
    def from_env(cls) -> ServerConfig:
        """Read OLLAMA_KEEP_ALIVE, OLLAMA_MAX_LOADED_MODELS, OLLAMA_NUM_PARALLEL, OLLAMA_MAX_QUEUE,
        OLLAMA_CONTEXT_LENGTH, OLLAMA_LOAD_TIMEOUT and POLLAMA_DRAFT_NUM_PREDICT."""
        keep_alive = DEFAULT_KEEP_ALIVE
        if envconfig.var("OLLAMA_KEEP_ALIVE"):
            try:
                keep_alive = parse_keep_alive(envconfig.var("OLLAMA_KEEP_ALIVE"))
            except ValueError:
                log.warning("invalid OLLAMA_KEEP_ALIVE=%r; using 5m", envconfig.var("OLLAMA_KEEP_ALIVE"))
        load_timeout = 300.0
        if envconfig.var("OLLAMA_LOAD_TIMEOUT"):
            try:
                load_timeout = parse_keep_alive(envconfig.var("OLLAMA_LOAD_TIMEOUT"))
            except ValueError:
                log.warning("invalid OLLAMA_LOAD_TIMEOUT; using 5m")
            if load_timeout <= 0:
                load_timeout = FOREVER
        max_loaded = envconfig.uint("OLLAMA_MAX_LOADED_MODELS", 0)
        return cls(
            keep_alive=keep_alive,
            max_loaded_models=max_loaded if max_loaded > 0 else 3,  # 0 = auto: 3 on CPU
            num_parallel=max(1, envconfig.uint("OLLAMA_NUM_PARALLEL", 1)),
            max_queue=max(1, envconfig.uint("OLLAMA_MAX_QUEUE", envconfig.DEFAULT_MAX_QUEUE)),
            context_length=envconfig.context_length(),
            load_timeout=load_timeout,
            draft_num_predict=envconfig.uint("POLLAMA_DRAFT_NUM_PREDICT", DEFAULT_DRAFT_NUM_PREDICT),
        )
