"""The CLI as the server's client: run, ps and stop against a real `pollama serve`."""

from __future__ import annotations

import socket

from cliproc import assert_one_line_error, pollama


def test_run_ps_and_stop_through_the_server(server):
    env = {"OLLAMA_HOST": server.host, "OLLAMA_MODELS": str(server.models)}
    ran = pollama("run", "smollm2", "The capital of France is", "--temperature", "0", "--repeat-penalty", "1",
                  "--num-predict", "4", "--verbose", "--keepalive", "10m", env=env)
    assert ran.returncode == 0, ran.stderr
    with server.http() as http:
        chat = http.post("/api/chat", json={"model": "smollm2", "stream": False, "messages": [
            {"role": "user", "content": "The capital of France is"}],
            "options": {"temperature": 0, "repeat_penalty": 1, "num_predict": 4}}).json()
    assert ran.stdout == chat["message"]["content"] + "\n"  # a chat turn, as `ollama run` sends it
    assert "eval count:           4 token(s)" in ran.stderr and "load duration:" in ran.stderr

    ps = pollama("ps", env=env)
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(r for r in rows if r.startswith("smollm2:latest"))
    assert "100% CPU" in row and "minutes from now" in row

    stopped = pollama("stop", "smollm2", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(r.startswith("smollm2:latest") for r in pollama("ps", env=env).stdout.splitlines()[1:])

    missing = pollama("run", "no-such-model", "hi", env=env)
    assert_one_line_error(missing, 'model "no-such-model" not found')


def test_ps_without_a_server_says_how_to_start_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    result = pollama("ps", env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert_one_line_error(result, "could not connect", "pollama serve")


def test_serve_on_a_port_in_use_is_a_one_line_error(server):
    result = pollama("serve", env={"OLLAMA_HOST": server.host}, timeout=30)
    assert_one_line_error(result, f"listen tcp {server.host}", "in use")
