"""`pollama run` without a server is the server's own pipeline, started in the CLI's process for
the one command: the same text for the same seed as through a real `pollama serve`, --format
json honoured, a model that thinks shown thinking, generation until the model ends (num_predict
-1 by default), --backend torch reaching the runner, and no runner process left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from cliproc import dead_host, no_server_note, pollama
from realmodels import real_model
from server.conftest import start_server, stop_server
from server.test_cli_terminal import QUESTION, THOUGHT_TEMPLATE

PROSE = "Why is the sky blue?"


def note(host: str) -> str:
    return no_server_note(host, "the model")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with one sequence per model, as `run` in its own process has (two would
    batch differently, and the same seed need not give the same text)."""
    real_model("smollm2")
    srv = start_server(tmp_path_factory.mktemp("server"), OLLAMA_NUM_PARALLEL="1")
    yield srv
    stop_server(srv)


def eval_count(stderr: str) -> int:
    return int(re.search(r"^eval count: +(\d+) token", stderr, re.M).group(1))


def test_same_seed_same_text_with_and_without_a_server_until_the_model_ends(server):
    """With no --num-predict, both run to the end of the answer: 201 tokens here (measured), where
    the old in-process default of 128 stopped mid-sentence."""
    flags = ("run", "smollm2", PROSE, "--seed", "42", "--verbose")
    served = pollama(*flags, env={"OLLAMA_HOST": server.host}, timeout=600)
    host = dead_host()
    here = pollama(*flags, env={"OLLAMA_HOST": host, "OLLAMA_MODELS": str(server.models)}, timeout=600)
    assert served.returncode == 0 and here.returncode == 0, (served.stderr, here.stderr)
    assert here.stdout == served.stdout and len(here.stdout) > 200
    assert here.stderr.startswith(note(host))
    assert eval_count(here.stderr) == eval_count(served.stderr) > 128


def test_format_json_without_a_server():
    host = dead_host()
    result = pollama("run", "smollm2", "--format", "json", "Describe a cat as a JSON object with its name and age.",
                     "--seed", "1", env={"OLLAMA_HOST": host}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == note(host)
    assert isinstance(json.loads(result.stdout), dict), result.stdout


def test_thinking_shown_without_a_server_as_the_server_answers(server):
    """A model whose template thinks (tests/server/test_cli_terminal.py's), created in the
    server's store: run here from that store prints the server's own thinking and answer, set
    apart as Ollama's CLI prints them through a pipe."""
    path = real_model("smollm2")
    with server.http() as http:
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        assert http.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
        r = http.post("/api/create", json={"model": "smol-thought", "files": {"m.gguf": digest},
                                           "template": THOUGHT_TEMPLATE, "stream": False})
        assert r.status_code == 200, r.text
        body = {"model": "smol-thought", "messages": [{"role": "user", "content": QUESTION}], "stream": False,
                "think": True, "options": {"temperature": 0}}
        thought = http.post("/api/chat", json=body).json()["message"]
    assert thought["thinking"] and thought["content"]
    host = dead_host()
    ran = pollama("run", "smol-thought", QUESTION, "--temperature", "0",
                  env={"OLLAMA_HOST": host, "OLLAMA_MODELS": str(server.models)}, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"Thinking...\n{thought['thinking']}\n...done thinking.\n\n{thought['content']}\n"


def runner_of(proc) -> psutil.Process | None:
    """The runner process under proc (a Popen, or pexpect's child), None when there is none."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            if "pollama.runner.serve" in child.cmdline():
                return child
        except psutil.Error:
            pass
    return None


def start_run(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OLLAMA_HOST": dead_host(), "TMPDIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "pollama.cli.main", "run", *args], env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def watch_runner(proc: subprocess.Popen) -> tuple[psutil.Process, list[str]]:
    """The runner process the command starts, and its command line (caught while it runs)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        runner = runner_of(proc)
        if runner is not None:
            try:
                return runner, runner.cmdline()
            except psutil.Error:
                pass
        time.sleep(0.02)
    pytest.fail(f"no runner process seen: {proc.communicate()}")


def gone(runner: psutil.Process) -> bool:
    try:
        return runner.wait(10) is not None or not runner.is_running()
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False


def test_torch_backend_reaches_the_runner_and_no_runner_is_left(tmp_path):
    """--backend torch is the runner's backend; when the command ends its runner has ended,
    and the private socket's directory (under TMPDIR) is gone."""
    ggml = pollama("run", str(real_model("smollm2")), "The capital of France is", "--temperature", "0",
                   "--num-predict", "6", env={"OLLAMA_HOST": dead_host()})
    proc = start_run(tmp_path, str(real_model("smollm2")), "The capital of France is", "--temperature", "0",
                     "--num-predict", "6", "--backend", "torch")
    runner, cmdline = watch_runner(proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert cmdline[cmdline.index("--backend") + 1] == "torch"
    assert out == ggml.stdout and out.strip()  # the float32 reference agrees on these greedy tokens
    assert gone(runner)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_or_terminated_the_runner_ends_too(tmp_path, sig, status):
    proc = start_run(tmp_path, "smollm2", PROSE, "--seed", "42")
    runner, _ = watch_runner(proc)
    proc.stdout.read(1)  # the answer has begun: interrupt a generation, not a load
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == status
    assert gone(runner)
    assert list(tmp_path.iterdir()) == []


def test_interactive_chat_without_a_server(server, tmp_path):
    """The REPL (which needed a server) runs on the one started here: the answer to a turn is the
    server's answer to the same chat, and /bye leaves no runner behind."""
    import pexpect

    options = {"temperature": 0, "num_predict": 30}
    with server.http() as http:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "stream": False,
                "options": options}
        want = http.post("/api/chat", json=body).json()["message"]["content"]
    env = {**os.environ, "OLLAMA_HOST": dead_host(), "HOME": str(tmp_path), "TERM": "xterm-256color",
           "TMPDIR": str(tmp_path)}
    child = pexpect.spawn(sys.executable, ["-m", "pollama.cli.main", "run", "smollm2", "--temperature", "0",
                                           "--num-predict", "30"], env=env, encoding="utf-8", timeout=300,
                          dimensions=(24, 200))
    try:
        child.expect_exact(">>> ")
        assert "running the model in this process" in child.before
        runner = runner_of(child)
        assert runner is not None
        child.sendline(QUESTION)
        child.expect_exact(">>> ")
        said = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[" + "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" + "]", "", child.before)
        assert said.split()[-len(want.split()):] == want.split(), (said, want)
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert gone(runner)


def test_a_served_api_never_loads_a_file_its_client_names(server):
    """Taking a path as a model name is the private server's alone (ServerConfig.model_files)."""
    with server.http() as http:
        for route, body in (("/api/show", {}), ("/api/generate", {"prompt": "Hi", "raw": True})):
            r = http.post(route, json={"model": str(real_model("smollm2")), **body})
            assert r.status_code == 400 and "invalid model name" in r.json()["error"], r.text
