"""`pollama pull` / `pollama push` without a server, as a user runs them: progress lines as Ollama's."""

from __future__ import annotations

import argparse
import io
import re

from cliproc import dead_host, no_server_note, pollama

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


def note(host: str, command: str) -> str:
    return no_server_note(host, f"{command} on the store").rstrip("\n")


def test_push_then_pull_print_ollamas_lines(registry, smollm2_store, tmp_path):
    name = f"{registry.host}/cli/smollm2:latest"
    smollm2_store.copy("smollm2", name)
    host = dead_host()
    pushed = pollama("push", name, "--insecure", env={"OLLAMA_HOST": host, "OLLAMA_MODELS": str(smollm2_store.root)})
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stderr.splitlines()
    assert lines[0] == "retrieving manifest" and lines[-3:] == ["pushing manifest", "success", note(host, "push")]
    assert any(re.fullmatch(r"pushing [0-9a-f]{12}\.\.\. 100% ▕█{40}▏ +98 MB", line) for line in lines), lines

    pulled = pollama("pull", name, "--insecure", env={"OLLAMA_HOST": host, "OLLAMA_MODELS": str(tmp_path / "models")})
    assert pulled.returncode == 0, pulled.stderr
    lines = pulled.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-4:] == ["verifying sha256 digest", "writing manifest", "success", note(host, "pull")]
    assert len([line for line in lines if line.startswith("pulling ") and "100%" in line]) == 4
    assert Store(tmp_path / "models", hash_cache=None).exists(name)


def test_pull_of_unknown_model_is_one_clear_error(registry, tmp_path):
    result = pollama("pull", f"{registry.host}/cli/none", "--insecure",
                     env={"OLLAMA_HOST": dead_host(), "OLLAMA_MODELS": str(tmp_path / "models")})
    lines = result.stderr.strip().splitlines()  # the progress so far, then the error, as Ollama prints them
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert lines[-1].startswith("Error: ") and "not found on 127.0.0.1" in lines[-1], lines


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
