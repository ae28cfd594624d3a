"""`pollama pull` / `pollama push` (parsers from pollama.cli.registry): progress lines as Ollama's."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from pollama.cli.registry import ProgressPrinter, add_registry_parsers
from pollama.store.store import Store


def parse(argv):
    parser = argparse.ArgumentParser(prog="pollama")
    add_registry_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_parsers():
    args = parse(["pull", "localhost:5000/a/b:c", "--insecure"])
    assert (args.command, args.model, args.insecure) == ("pull", "localhost:5000/a/b:c", True)
    assert parse(["push", "a/b"]).insecure is False


@pytest.fixture
def no_server(monkeypatch):
    """No server answers at OLLAMA_HOST, so the commands work on the store here."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")


def test_push_then_pull_print_ollamas_lines(registry, smollm2_store, tmp_path, monkeypatch, capsys, no_server):
    name = f"{registry.host}/cli/smollm2:latest"
    monkeypatch.setenv("OLLAMA_MODELS", str(smollm2_store.root))
    smollm2_store.copy("smollm2", name)
    args = parse(["push", name, "--insecure"])
    assert args.func(args) == 0
    pushed = capsys.readouterr().err.splitlines()
    assert pushed[0] == "retrieving manifest" and pushed[-2:] == ["pushing manifest", "success"]
    assert any(re.fullmatch(r"pushing [0-9a-f]{12}\.\.\. 100% ▕█{40}▏ +98 MB", line) for line in pushed), pushed

    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    args = parse(["pull", name, "--insecure"])
    assert args.func(args) == 0
    pulled = capsys.readouterr().err.splitlines()
    assert pulled[0] == "pulling manifest"
    assert pulled[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert len([line for line in pulled if line.startswith("pulling ") and "100%" in line]) == 4
    assert Store(tmp_path / "models", hash_cache=None).exists(name)


def test_pull_of_unknown_model_is_one_clear_error(registry, tmp_path, monkeypatch, no_server):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    args = parse(["pull", f"{registry.host}/cli/none", "--insecure"])
    with pytest.raises(ValueError, match="not found on 127.0.0.1"):
        args.func(args)


def test_progress_printer_without_a_terminal_prints_each_status_once():
    out = io.StringIO()
    printer = ProgressPrinter(out)
    printer({"status": "pulling manifest"})
    for done in (0, 50, 100):
        printer({"status": "pulling 0123456789ab", "digest": "sha256:" + "0" * 64, "total": 100, "completed": done})
    printer({"status": "success"})
    printer.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest" and lines[2] == "success"
    assert lines[1].startswith("pulling 0123456789ab... 100% ▕") and lines[1].endswith("100 B")
