"""The scheduler against a real server: parallel sequences, disconnects, dead runners, the
queue limit, eviction, expiry and reloads."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
LONG = {**GREEDY, "num_predict": 2000}  # longer than any test waits: these streams are dropped or killed
COUNTING = "1, 2, 3, 4, 5, 6, 7,"  # greedy SmolLM2 counts on and on: no early end of sequence


def stream_lines(response: httpx.Response):
    for line in response.iter_lines():
        if line:
            yield json.loads(line)


def chat_text(server, prompt: str, num_predict: int = 8) -> str:
    with server.http() as http:
        r = http.post("/api/chat", json={"model": "smollm2", "stream": False, "options": {**GREEDY, "num_predict": num_predict},
                                          "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    return r.json()["message"]["content"]


@pytest.fixture(scope="module")
def other_model(server, smollm2_path):
    """A second model (another runner process), from the same weights."""
    client = ollama.Client(host=server.url, timeout=120)
    client.create(model="other", files={"m.gguf": client.create_blob(smollm2_path)})
    return "other"


def test_two_parallel_streams_equal_their_greedy_text_alone(server):
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    alone = [chat_text(server, p) for p in prompts]
    together: list[str | None] = [None, None]

    def run(i: int) -> None:
        together[i] = chat_text(server, prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone


def test_disconnect_frees_the_slot(server):
    # OLLAMA_NUM_PARALLEL=2: fill both slots, drop one stream, and a new request runs at once.
    body = {"model": "smollm2", "prompt": COUNTING, "raw": True, "options": LONG}
    with httpx.Client(base_url=server.url, timeout=120) as keep, httpx.Client(base_url=server.url, timeout=120) as drop:
        with keep.stream("POST", "/api/generate", json=body) as kept:
            kept_lines = stream_lines(kept)
            next(kept_lines)
            with drop.stream("POST", "/api/generate", json=body) as dropped:
                next(stream_lines(dropped))
            drop.close()  # the connection itself goes away, as when a client dies
            started = time.monotonic()
            with server.http() as http:
                r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                                     "options": {**GREEDY, "num_predict": 2}})
            assert r.status_code == 200 and r.json()["eval_count"] == 2
            # Far sooner than the dropped stream's 2000 tokens would have taken.
            assert time.monotonic() - started < 30
            assert not next(kept_lines)["done"]  # the kept stream still holds its slot


def test_a_non_streaming_client_that_gives_up_frees_its_slot(server):
    # Both slots taken by clients that time out and hang up; if either slot stayed busy
    # with its 2000 tokens, the request after them would wait for it.
    body = {"model": "smollm2", "prompt": COUNTING, "raw": True, "stream": False, "options": LONG}
    for _ in range(2):
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, read=1.5)) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/api/generate", json=body)
    started = time.monotonic()
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                             "options": {**GREEDY, "num_predict": 2}})
    assert r.status_code == 200 and time.monotonic() - started < 30


def test_killed_runner_fails_its_request_and_the_next_one_reloads(server, smollm2_path, other_model):
    with server.http() as http:
        assert http.post("/api/generate", json={"model": other_model, "prompt": "", "keep_alive": "5m"}).status_code == 200
    other_pid = server.runner_pids(str(server.models))[0]

    other_result: dict = {}

    def other_stream() -> None:
        with server.http() as http:
            with http.stream("POST", "/api/generate", json={"model": other_model, "prompt": COUNTING, "raw": True,
                                                            "options": {**GREEDY, "num_predict": 40}}) as r:
                other_result["lines"] = list(stream_lines(r))

    with server.http() as http, http.stream("POST", "/api/generate", json={"model": "smollm2", "prompt": COUNTING, "raw": True,
                                                                             "options": LONG}) as r:
        lines = stream_lines(r)
        next(lines)
        neighbour = threading.Thread(target=other_stream)
        neighbour.start()
        (victim,) = server.runner_pids(str(smollm2_path))
        os.kill(victim, signal.SIGKILL)
        rest = list(lines)
    assert rest and "error" in rest[-1], rest[-3:]
    assert "terminated unexpectedly" in rest[-1]["error"] and "SIGKILL" in rest[-1]["error"]
    assert not any(line.get("done") for line in rest)

    neighbour.join(120)
    assert other_result["lines"][-1]["done"] and other_result["lines"][-1]["eval_count"] == 40
    assert server.runner_pids(str(server.models)) == [other_pid]  # untouched

    assert chat_text(server, "The capital of France is", 4)  # a new runner for smollm2
    assert len(server.runner_pids(str(smollm2_path))) == 1


def test_load_time_option_change_reloads(server, smollm2_path):
    client = ollama.Client(host=server.url, timeout=120)
    client.generate(model="smollm2", prompt="", options={"num_ctx": 512})
    first = server.runner_pids(str(smollm2_path))
    assert [m.context_length for m in client.ps().models if m.model == "smollm2:latest"] == [512]
    client.generate(model="smollm2", prompt="", options={"num_ctx": 1024})
    assert [m.context_length for m in client.ps().models if m.model == "smollm2:latest"] == [1024]
    assert server.runner_pids(str(smollm2_path)) != first
    # A sampling option does not reload.
    client.generate(model="smollm2", prompt="Hi", options={"num_ctx": 1024, "num_predict": 1, "temperature": 0.1})
    assert len(server.runner_pids(str(smollm2_path))) == 1


@pytest.fixture(scope="module")
def strict(server_factory, smollm2_path):
    """One request at a time, one model loaded at a time, one sequence."""
    srv = server_factory(OLLAMA_MAX_QUEUE="1", OLLAMA_MAX_LOADED_MODELS="1", OLLAMA_NUM_PARALLEL="1")
    client = ollama.Client(host=srv.url, timeout=120)
    client.create(model="other", files={"m.gguf": client.create_blob(smollm2_path)})
    return srv


def test_full_queue_answers_503(strict):
    with strict.http() as http, http.stream("POST", "/api/generate", json={"model": "smollm2", "prompt": COUNTING, "raw": True,
                                                                             "options": LONG}) as r:
        lines = stream_lines(r)
        next(lines)
        with strict.http() as other:
            busy = other.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "options": {"num_predict": 1}})
        assert busy.status_code == 503 and "server busy" in busy.json()["error"]
        assert not next(lines)["done"]
    # The dropped stream frees the queue.
    deadline = time.monotonic() + 30
    while True:
        with strict.http() as http:
            r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}})
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200


def test_second_model_evicts_the_first_and_keep_alive_expires(strict):
    client = ollama.Client(host=strict.url, timeout=120)
    client.generate(model="smollm2", prompt="")
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]
    client.generate(model="other", prompt="Hi", options={"num_predict": 1}, keep_alive="1s")
    assert [m.model for m in client.ps().models] == ["other:latest"]
    assert len(strict.runner_pids()) == 1
    time.sleep(2.5)
    assert client.ps().models == []
    assert strict.runner_pids() == []


NEAR_TIE = 0.05  # logits this close may swap between batch shapes; anything else must match


def chat_tokens(http: httpx.Client, prompt: str) -> list[dict]:
    """The logprobs entries (token text and the two best alternatives) of a greedy chat turn."""
    r = http.post("/api/chat", json={"model": "smollm2", "stream": True, "logprobs": True, "top_logprobs": 2,
                                      "options": {**GREEDY, "num_predict": 8},
                                      "messages": [{"role": "user", "content": prompt}]}, timeout=300)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert lines[-1]["done"], lines[-1]
    return [entry for line in lines for entry in line.get("logprobs") or []]


def assert_same_up_to_near_ties(alone: list[dict], together: list[dict]) -> None:
    for a, b in zip(alone, together):
        if a["token"] != b["token"]:
            best, second = a["top_logprobs"][:2]
            assert best["logprob"] - second["logprob"] < NEAR_TIE, (a, b)
            return  # past a near tie the two texts may go their own ways
    assert len(alone) == len(together)


def test_sixteen_streams_on_four_slots_match_alone_and_the_seventeenth_is_refused(server_factory):
    srv = server_factory(OLLAMA_NUM_PARALLEL="4", OLLAMA_MAX_QUEUE="16")
    prompts = [f"Write a word that rhymes with the number {i}." for i in range(16)]
    with srv.http(300) as http:
        alone = [chat_tokens(http, p) for p in prompts]
    together: list = [None] * 16

    def run(i: int) -> None:
        with srv.http(300) as http:
            together[i] = chat_tokens(http, prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for a, b in zip(alone, together):
        assert_same_up_to_near_ties(a, b)

    # 16 long streams fill the queue (4 decoding, 12 waiting for a slot); the 17th gets 503.
    body = {"model": "smollm2", "prompt": COUNTING, "raw": True, "options": LONG}
    stop = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        with srv.http(300) as http, http.stream("POST", "/api/generate", json=body) as r:
            for _ in stream_lines(r):
                started.release()
                if stop.wait(0):
                    return

    holders = [threading.Thread(target=hold) for _ in range(16)]
    for t in holders:
        t.start()
    try:
        for _ in range(4):
            assert started.acquire(timeout=120)  # the first four are decoding
        time.sleep(1.0)  # and the other twelve have been accepted and wait for a slot
        with srv.http() as http:
            busy = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "options": {"num_predict": 1}})
        assert busy.status_code == 503 and busy.json()["error"].startswith("server busy")
    finally:
        stop.set()
        for t in holders:
            t.join(120)


def test_runners_exit_when_the_server_is_killed(server_factory):
    import psutil

    srv = server_factory()
    with srv.http() as http:
        assert http.post("/api/generate", json={"model": "smollm2", "prompt": ""}).status_code == 200
    runners = [psutil.Process(pid) for pid in srv.runner_pids()]
    assert len(runners) == 1
    socket_dirs = {Path(arg).parent for p in runners for arg in p.cmdline() if arg.endswith("runner.sock")}
    srv.proc.kill()  # no shutdown code runs: the runner sees its stdin pipe close
    srv.proc.wait(10)
    _gone, alive = psutil.wait_procs(runners, timeout=20)
    assert not alive
    assert socket_dirs and not any(d.exists() for d in socket_dirs)  # they cleaned up after themselves
