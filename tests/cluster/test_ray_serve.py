"""pollama as a Ray Serve application on a local Ray cluster (loopback, 3 CPUs): 2 replicas of
SmolLM2 behind the ingress, driven by the official ollama and openai clients.

One Ray start for the module (about 25 s here: ray.init 7 s, the app with 2 loaded replicas
the rest). The replica that answered each request is in its x-pollama-replica header.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
import ray
from ray import serve
from realmodels import real_model

REPO = Path(__file__).resolve().parents[2]
NUM_PARALLEL = 12  # more slots than a replica gets conversations, so none is evicted
REPLICA_PROCESS = "ServeReplica:pollama:model-smollm2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The app's URL: 2 replicas of SmolLM2, each with NUM_PARALLEL slots, both loaded."""
    real_model("smollm2")  # skips with how to install it when missing
    from pollama.cluster.app import APP_NAME, build
    from pollama.cluster.config import ClusterConfig
    tmp = tmp_path_factory.mktemp("cluster")
    env = {"OLLAMA_MODELS": str(tmp / "models"), "POLLAMA_CACHE": str(tmp / "cache"), "PYTHONPATH": str(REPO),
           "OLLAMA_CONTEXT_LENGTH": "1024"}
    port = free_port()
    ray.init(num_cpus=3, include_dashboard=False, runtime_env={"env_vars": env}, _temp_dir=str(tmp / "ray"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ClusterConfig.from_dict({"models": [{"name": "smollm2", "replicas": 2, "num_parallel": NUM_PARALLEL}]})
        serve.run(build(config), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _warm_both(url)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OPTIONS = {"temperature": 0, "num_predict": 8}


def _warm_both(url: str) -> None:
    """Load the runner of each replica (different prompts spread by power of two choices)."""
    seen = set()
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(20):
            r = http.post("/api/generate", json={"model": "smollm2", "prompt": f"warm {i}", "stream": False,
                                                 "options": {**OPTIONS, "num_predict": 1}})
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-pollama-replica"])
            if len(seen) == 2:
                return
    raise AssertionError(f"20 requests all went to one replica: {seen}")


def _chat(http: httpx.Client, messages: list[dict]) -> tuple[str, dict]:
    r = http.post("/api/chat", json={"model": "smollm2", "messages": messages, "stream": False, "options": OPTIONS})
    assert r.status_code == 200, r.text
    return r.headers["x-pollama-replica"], {**r.json(), "cached": int(r.headers["x-pollama-prompt-cached"])}


def test_conversations_stay_on_the_replica_of_their_first_turn(cluster):
    conversations = [[{"role": "user", "content": f"My name is {name}. Tell me a story about a {thing}."}]
                     for name, thing in zip(["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal"],
                                            ["cat", "ship", "tree", "star", "bird", "lamp", "road", "moon"])]
    follow_ups = ["Make it shorter.", "Now give it a title.", "Who is the hero?"]
    replicas: list[list[str]] = [[] for _ in conversations]
    answers: list[list[dict]] = [[] for _ in conversations]

    async def turn(http: httpx.Client, i: int) -> None:
        replica, answer = await asyncio.to_thread(_chat, http, conversations[i])
        replicas[i].append(replica)
        answers[i].append(answer)
        conversations[i].append(answer["message"])

    async def main():
        with httpx.Client(base_url=cluster, timeout=300, limits=httpx.Limits(max_connections=16)) as http:
            for follow_up in [None, *follow_ups]:  # the conversations' turns in lockstep
                if follow_up:
                    for conversation in conversations:
                        conversation.append({"role": "user", "content": follow_up})
                await asyncio.gather(*[turn(http, i) for i in range(len(conversations))])

    asyncio.run(main())
    firsts = Counter(r[0] for r in replicas)
    assert len(firsts) == 2, f"first turns all on one replica: {firsts}"  # plain load spreads
    for i, seen in enumerate(replicas):
        assert seen == [seen[0]] * 4, f"conversation {i} moved: {seen}"
    # The cached prefix shows in prompt evaluation: from the second turn on, the runner found
    # the whole previous prompt and all but the last of its answer's tokens cached (that
    # token was sampled, never evaluated), and evaluated only the rest.
    print("replicas:", replicas)
    print("cached/prompt/eval per turn:", [[(a["cached"], a["prompt_eval_count"], a["eval_count"]) for a in conv]
                                           for conv in answers])
    for i, conv in enumerate(answers):
        for before, after in zip(conv, conv[1:]):
            assert after["cached"] >= before["prompt_eval_count"] + before["eval_count"] - 1, (i, before, after)
    durations = [[a["prompt_eval_duration"] // 1_000_000 for a in conv] for conv in answers]
    print("prompt_eval_duration (ms) per turn:", durations)


def test_concurrent_streams_through_the_official_clients_spread_over_both_replicas(cluster):
    import ollama
    import openai

    replicas: list[str] = []

    async def note(response: httpx.Response) -> None:
        replicas.append(response.headers.get("x-pollama-replica", "none"))

    async def ollama_chat(client, i: int) -> str:
        parts = []
        async for chunk in await client.chat(model="smollm2", stream=True, options=OPTIONS,
                                             messages=[{"role": "user", "content": f"Count to {i + 2}."}]):
            parts.append(chunk.message.content)
        assert chunk.done and chunk.eval_count == OPTIONS["num_predict"]
        return "".join(parts)

    async def openai_chat(client, i: int) -> str:
        stream = await client.chat.completions.create(
            model="smollm2", stream=True, temperature=0, max_tokens=OPTIONS["num_predict"],
            messages=[{"role": "user", "content": f"Name {i + 2} colors."}])
        parts, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        assert finish == "length"
        return "".join(parts)

    async def main():
        hooks = {"response": [note]}
        native = ollama.AsyncClient(host=cluster, event_hooks=hooks, timeout=300)
        oai = openai.AsyncOpenAI(base_url=cluster + "/v1", api_key="x", max_retries=0,
                                 http_client=httpx.AsyncClient(event_hooks=hooks, timeout=300))
        return await asyncio.gather(*[ollama_chat(native, i) for i in range(8)],
                                    *[openai_chat(oai, i) for i in range(8)])

    answers = asyncio.run(main())
    assert len(answers) == 16 and all(answers)
    served = Counter(replicas)
    assert len(replicas) == 16 and "none" not in served and len(served) == 2, served


def _replica_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if REPLICA_PROCESS in cmd:
            found.append(p)
    return found


def _replica_pids() -> dict[str, int]:
    """Replica id -> its process, asked of the replicas themselves (until both answered)."""
    handle = serve.get_deployment_handle("model-smollm2", app_name="pollama")
    pids: dict[str, int] = {}
    for _ in range(40):
        status = handle.status.remote().result()
        pids[status["replica"]] = status["pid"]
        if len(pids) == 2:
            return pids
    raise AssertionError(f"only these replicas answered: {pids}")


# Prompts that differ from their first word on: none prefers another's replica.
TOPICS = ["Rain", "Mountains", "Coffee", "Trains", "Winter", "Bees", "Lighthouses", "Clocks"]


def test_a_dead_replica_fails_only_its_requests_and_comes_back(cluster):
    pids = _replica_pids()
    assert sorted(pids.values()) == sorted(p.pid for p in _replica_processes())
    started: dict[int, str] = {}
    last_lines: dict[int, dict] = {}

    def stream(i: int) -> None:
        with httpx.Client(base_url=cluster, timeout=300) as http, http.stream(
                "POST", "/api/generate", json={"model": "smollm2", "prompt": f"{TOPICS[i]}: a long poem about it.",
                                               "options": {**OPTIONS, "num_predict": 200}}) as r:
            started[i] = r.headers["x-pollama-replica"]  # known once the first line came
            for line in r.iter_lines():
                if line:
                    last_lines[i] = httpx.Response(200, content=line).json()

    async def main():
        load = [asyncio.create_task(asyncio.to_thread(stream, i)) for i in range(8)]
        deadline = time.monotonic() + 120
        while len(started) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        running = {i: replica for i, replica in started.items() if not last_lines.get(i, {}).get("done")}
        busiest = Counter(running.values()).most_common(1)[0][0]
        os.kill(pids[busiest], signal.SIGKILL)
        await asyncio.gather(*load)
        return busiest, running

    dead, in_flight = asyncio.run(main())
    assert len(started) == len(last_lines) == 8
    for i, replica in started.items():
        if i in in_flight and replica == dead:  # its requests end with an error line naming the replica
            assert last_lines[i]["error"].startswith(
                f"model replica {dead} for smollm2:latest failed during the request: ActorDiedError"), last_lines[i]
        else:  # the others' stream to their end
            assert last_lines[i]["done"] and last_lines[i]["done_reason"] in ("length", "stop"), last_lines[i]
    # Later requests all succeed (on the live replica, then on both once Ray restarts the dead one).
    with httpx.Client(base_url=cluster, timeout=300) as http:
        for i in range(4):
            r = http.post("/api/generate", json={"model": "smollm2", "prompt": f"after {i}", "stream": False,
                                                 "options": OPTIONS})
            assert r.status_code == 200 and r.json()["done"], r.text
    deadline = time.monotonic() + 60
    while len(_replica_processes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_replica_processes()) == 2
    status = serve.status().applications["pollama"].deployments["model-smollm2"]
    deadline = time.monotonic() + 60
    while status.status != "HEALTHY" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = serve.status().applications["pollama"].deployments["model-smollm2"]
    assert status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2, status
    assert dead not in _replica_pids()  # a new replica in its place


def _registry_plumbing():
    """tests/registry/conftest.py (RunningRegistry: Debian's docker-registry on loopback)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("registry_conftest", REPO / "tests" / "registry" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _single_server(models: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A plain `pollama serve` on a free port over the store `models`."""
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(models),
           "POLLAMA_CACHE": str(tmp / "cache"), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pollama.cli.main", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("pollama serve did not start")


def test_a_replica_with_an_empty_store_pulls_the_model_and_answers_as_a_single_server(cluster, tmp_path):
    from pollama.cluster.app import build
    from pollama.cluster.config import ClusterConfig
    from pollama.create.pipeline import create_model
    from pollama.store.registry import push_model
    from pollama.store.store import Store

    plumbing = _registry_plumbing()
    registry = plumbing.RunningRegistry(tmp_path / "registry")
    single = None
    try:
        source = Store(tmp_path / "source", hash_cache=None)
        create_model(source, "smollm2", f"FROM {real_model('smollm2')}\n", tmp_path)
        name = f"{registry.host}/test/smollm2:latest"
        source.copy("smollm2", name)
        pushed = push_model(source, name, insecure=True, settings=plumbing.SETTINGS).manifest
        node_store = tmp_path / "node-store"
        config = ClusterConfig.from_dict({"store": str(tmp_path / "ingress-store"), "models": [
            {"name": name, "replicas": 1, "num_parallel": 1, "pull": True, "insecure": True, "store": str(node_store)}]})
        serve.run(build(config), name="pulled", route_prefix="/pulled")
        # The replica's store now holds the pushed manifest's blobs, each its digest's bytes.
        import hashlib

        for layer in pushed.all_layers():
            blob = Store(node_store).blob_path(layer.digest)
            assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer.digest
        body = {"prompt": "The capital of France is", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 16, "num_thread": 1}}
        r = httpx.post(cluster + "/pulled/api/generate", json={"model": name, **body}, timeout=300)
        assert r.status_code == 200, r.text
        single, url = _single_server(source.root, tmp_path)
        alone = httpx.post(url + "/api/generate", json={"model": "smollm2", **body}, timeout=300)
        assert alone.status_code == 200, alone.text
        assert r.json()["response"] == alone.json()["response"] and r.json()["eval_count"] == 16
    finally:
        if single is not None:
            single.terminate()
            single.wait(10)
        serve.delete("pulled")
        registry.stop()
