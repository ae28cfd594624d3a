"""/api/push and /api/pull against a real registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import ollama
import pytest

REGISTRY = shutil.which("docker-registry") or shutil.which("registry")


@pytest.fixture(scope="module")
def registry_host(tmp_path_factory):
    """host:port of a registry of our own, stopped after the module."""
    if REGISTRY is None:
        pytest.skip("the docker-registry binary is not installed (apt-get install -y docker-registry)")
    folder = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = folder / "config.yml"
    config.write_text("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                      f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n  secret: pollama-test\n")
    with open(folder / "registry.log", "wb") as log:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((folder / "registry.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_push_then_pull_through_the_api(server, smollm2_path, registry_host):
    client = ollama.Client(host=server.url, timeout=300)
    name = f"{registry_host}/team/smol:latest"
    client.create(model=name, files={"m.gguf": client.create_blob(smollm2_path)}, parameters={"num_predict": 2})
    pushed = [p.status for p in client.push(name, insecure=True, stream=True)]
    assert pushed[0] == "retrieving manifest" and pushed[-1] == "success"

    client.delete(name)
    pulled = [p.status for p in client.pull(name, insecure=True, stream=True)]
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"
    assert client.generate(model=name, prompt="Hi").eval_count == 2  # the pulled model runs, its parameters kept

    one = client.pull(name, insecure=True)  # not streamed: one object
    assert one.status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull(f"{registry_host}/team/missing:latest", insecure=True)
    assert e.value.status_code == 404 and "not found" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.push(f"{registry_host}/team/not-here:latest", insecure=True)
    assert e.value.status_code == 404
    client.delete(name)


def test_cli_pull_and_push_through_the_server(server, smollm2_path, registry_host):
    from cliproc import pollama

    env = {"OLLAMA_HOST": server.host}
    client = ollama.Client(host=server.url, timeout=300)
    name = f"{registry_host}/cli/smol:latest"
    client.create(model=name, files={"m.gguf": client.create_blob(smollm2_path)})
    pushed = pollama("push", name, "--insecure", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr.splitlines()[-1] == "success"
    client.delete(name)
    pulled = pollama("pull", name, "--insecure", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.splitlines()[0] == "pulling manifest" and pulled.stderr.splitlines()[-1] == "success"
    assert name in [m.model for m in client.list().models]
    missing = pollama("pull", f"{registry_host}/cli/missing:latest", "--insecure", env=env)
    lines = missing.stderr.strip().splitlines()  # the progress so far, then the error, as Ollama prints them
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert lines[-1].startswith("Error: ") and "not found" in lines[-1]
    client.delete(name)
