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


def test_draft_num_predict_default_from_env(monkeypatch, smollm2_path):
    from pollama.fs.gguf import GGUFFile
    from pollama.server.models import ModelRef
    from pollama.server.options import request_options

    monkeypatch.delenv("POLLAMA_DRAFT_NUM_PREDICT", raising=False)
    assert ServerConfig.from_env().draft_num_predict == 10  # the runner's own default
    monkeypatch.setenv("POLLAMA_DRAFT_NUM_PREDICT", "0")
    config = ServerConfig.from_env()
    assert config.draft_num_predict == 0  # speculative decoding off unless a request asks
    with GGUFFile(smollm2_path) as gguf:
        model = ModelRef(name="smollm2:latest", model_path=smollm2_path, metadata=dict(gguf.metadata))
    assert request_options(model, {}, config).predict["draft_num_predict"] == 0
    assert request_options(model, {"draft_num_predict": 4}, config).predict["draft_num_predict"] == 4
