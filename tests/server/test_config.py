"""OLLAMA_HOST and keep_alive parsing, as Ollama reads them (no server needed)."""

from __future__ import annotations

import math

import pytest

from pollama.server.config import (
    ServerConfig,
    parse_go_duration,
    parse_host,
    parse_keep_alive,
)


@pytest.mark.parametrize("value, scheme, host, port, url", [
    ("", "http", "127.0.0.1", 11434, "http://127.0.0.1:11434"),
    ("0.0.0.0", "http", "0.0.0.0", 11434, "http://127.0.0.1:11434"),
    ("0.0.0.0:8080", "http", "0.0.0.0", 8080, "http://127.0.0.1:8080"),
    (":9000", "http", "0.0.0.0", 9000, "http://127.0.0.1:9000"),
    ("http://example.com", "http", "example.com", 80, "http://example.com:80"),
    ("https://example.com/path", "https", "example.com", 443, "https://example.com:443"),
    ("[::1]:5000", "http", "::1", 5000, "http://[::1]:5000"),
    ('"127.0.0.1:7000"', "http", "127.0.0.1", 7000, "http://127.0.0.1:7000"),
    ("127.0.0.1:notaport", "http", "127.0.0.1", 11434, "http://127.0.0.1:11434"),
])
def test_parse_host(value, scheme, host, port, url):
    parsed = parse_host(value)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.url) == (scheme, host, port, url)


@pytest.mark.parametrize("value, seconds", [
    ("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("1.5h", 5400), ("0", 0), (30, 30), (2.5, 2.5), ("45", 45),
    (0, 0), ("-1", math.inf), (-1, math.inf), ("-5m", math.inf),
])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "", True, [1], {"a": 1}, "1x"])
def test_bad_keep_alive(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_go_duration_units():
    assert parse_go_duration("1h2m3s4ms5us6ns") == pytest.approx(3723.004005006)


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "10m")
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", "0")
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "junk")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    config = ServerConfig.from_env()
    assert (config.keep_alive, config.max_loaded_models, config.num_parallel, config.max_queue, config.context_length) == (
        600, 3, 4, 512, 8192)
