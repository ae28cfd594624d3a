"""OLLAMA_* and POLLAMA_* variables are read in one place, as Ollama's envconfig reads them:
spaces then quotes trimmed, booleans by Go's strconv.ParseBool (anything else non-empty is true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pollama
from pollama import envconfig, errors
from pollama.runner import engine, limits
from pollama.server.config import ServerConfig, parse_host


@pytest.mark.parametrize("raw, value", [
    ("", ""), ("x", "x"), ("  x  ", "x"), ('"x"', "x"), ("'x'", "x"), (' "x" ', "x"), ("\"'x'\"", "x"),
    ('" x "', " x "),  # quotes, then nothing more: Ollama's Var
])
def test_var_trims_spaces_then_quotes(monkeypatch, raw, value):
    monkeypatch.setenv("POLLAMA_TEST_VAR", raw)
    assert envconfig.var("POLLAMA_TEST_VAR") == value


@pytest.mark.parametrize("raw, value", [
    *[(t, True) for t in ("1", "t", "T", "TRUE", "true", "True", '"1"', "'true'", " 1 ")],
    *[(f, False) for f in ("0", "f", "F", "FALSE", "false", "False", '"0"', "'false'", " 0 ")],
    # Not ParseBool's: true, as Ollama's BoolWithDefault has it.
    ("yes", True), ("on", True), ("no", True), ("off", True), ("2", True), ("fAlSe", True),
])
def test_booleans_follow_parse_bool(monkeypatch, raw, value):
    monkeypatch.setenv("POLLAMA_TEST_BOOL", raw)
    assert envconfig.boolean("POLLAMA_TEST_BOOL") is value
    assert envconfig.boolean("POLLAMA_TEST_BOOL", default=not value) is value


@pytest.mark.parametrize("raw", [None, "", "  ", '""'])
def test_an_unset_or_empty_boolean_is_its_default(monkeypatch, raw):
    if raw is None:
        monkeypatch.delenv("POLLAMA_TEST_BOOL", raising=False)
    else:
        monkeypatch.setenv("POLLAMA_TEST_BOOL", raw)
    assert envconfig.boolean("POLLAMA_TEST_BOOL") is False and envconfig.boolean("POLLAMA_TEST_BOOL", True) is True


@pytest.mark.parametrize("raw, value", [("8", 8), (' "8192" ', 8192), ("junk", 7), ("-1", 7), ("+3", 7), ("1.5", 7), ("", 7)])
def test_unsigned_integers(monkeypatch, raw, value):
    monkeypatch.setenv("POLLAMA_TEST_UINT", raw)
    assert envconfig.uint("POLLAMA_TEST_UINT", 7) == value


@pytest.mark.parametrize("raw, on", [
    ("1", True), ("true", True), ('"1"', True), ("2", True), ("0", False), ("false", False), ("", False),
    ("yes", False),  # Ollama's log level: neither a boolean nor a number is INFO
])
def test_debug_as_ollamas_log_level(monkeypatch, raw, on):
    monkeypatch.setenv("OLLAMA_DEBUG", raw)
    assert envconfig.debug() is on and errors.debug_enabled() is on
    assert errors.user_errors() == (() if on else (ValueError, OSError, errors.CacheFullError, MemoryError))


@pytest.mark.parametrize("raw, on", [(None, True), ("1", True), ("0", False), ('"0"', False), ("'false'", False),
                                     ('"1"', True), ("no", True)])
def test_quoted_flags_mean_the_same_to_the_runner_and_the_server(monkeypatch, raw, on):
    # OLLAMA_FLASH_ATTENTION="1" once counted for the server and not for the runner.
    if raw is None:
        monkeypatch.delenv("OLLAMA_FLASH_ATTENTION", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", raw)
    assert limits.flash_attention_default() is on and envconfig.flash_attention() is on
    monkeypatch.setenv("POLLAMA_EXACT_GELU", '"1"' if on else '"0"')
    assert engine.exact_gelu_default() is on


def test_quoted_values_for_the_server_and_the_store(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", '"4"')
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", " '8192' ")
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", '"-3"')  # not a count: the default
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", '"10m"')
    config = ServerConfig.from_env()
    assert (config.num_parallel, config.context_length, config.max_queue, config.keep_alive) == (4, 8192, 512, 600)
    monkeypatch.setenv("OLLAMA_HOST", '"0.0.0.0:8080"')
    assert parse_host().port == 8080
    monkeypatch.setenv("OLLAMA_MODELS", f'"{tmp_path}"')
    assert envconfig.models_dir() == tmp_path
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", ' "F32" ')
    assert engine.kv_cache_dtype(None).name == "F32"


def test_defaults_are_defined_once():
    assert ServerConfig().context_length == engine.DEFAULT_NUM_CTX == envconfig.DEFAULT_NUM_CTX == 4096
    assert engine.DEFAULT_NUM_BATCH == envconfig.DEFAULT_NUM_BATCH == 512


def test_nothing_else_reads_the_environment():
    root = Path(pollama.__file__).parent
    readers = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py") if path.name != "envconfig.py"
               for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if re.search(r"os\.environ\.get|os\.getenv|os\.environ\[", line)]
    assert not readers, readers
