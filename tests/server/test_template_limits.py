"""A model's chat template cannot exhaust the server's memory or CPU, nor block its event loop.

Against a real `pollama serve`: a GGUF whose tokenizer.chat_template is `{{ 'a' * 10**9 }}` or
`{{ 7 ** 30000000 }}` (Jinja's compiler would fold both at compile time, and
jinja2.meta.find_undeclared_variables compiles), and a Go TEMPLATE of `{{if true}}` nested
20000 deep (a RecursionError after tens of seconds of parsing on the event loop; now over
the parser's size limit) or 1000 deep (within the size limit, over the nesting one). /api/show
and /api/chat answer within 10 s, the server process stays under 1 GiB, and /api/version
answers within 1 s while the chat is handled. Such a TEMPLATE is refused by /api/create and
as a request's template override (400); a model that already has one in its store answers
its chats with the template's error, naming the limit.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from pollama.fs.ggml_types import GGMLType
from pollama.fs.writer import write_gguf
from pollama.store.manifest import MediaType
from pollama.store.store import Store

SECONDS = 10.0  # /api/show, /api/chat, /api/create answer within this
VERSION_SECONDS = 1.0  # /api/version answers within this while a chat is handled
MAX_RSS = 1 << 30  # the server process stays under this

JINJA_BOMBS = {
    "repeat": ("{{ 'a' * 10**9 }}", "repetition too large"),
    "power": ("{{ 7 ** 30000000 }}", "power too large"),
}


def nested_go(depth: int) -> str:
    return "{{if true}}" * depth + "{{ .Prompt }}" + "{{end}}" * depth


# 20000 deep is 360 KB, over the parser's size limit; 1000 deep is within it and over its
# nesting limit (50). Either was a RecursionError, the first after half a minute.
DEEP_GO = {20000: (nested_go(20000), "template too large"), 1000: (nested_go(1000), "nested too deeply")}
CHAT = [{"role": "user", "content": "ab"}]


@pytest.fixture(scope="module")
def smollm2_path():
    """Overrides the server fixtures' real model: these tests make tiny models of their own."""
    return None


def tiny_gguf(path: Path, chat_template: str | None = None) -> Path:
    """A loadable one-layer llama with a five-token vocabulary (and the given chat_template)."""
    vocab = ["<unk>", "<s>", "</s>", "a", "b"]
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 1, "llama.embedding_length": 32, "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 32, "llama.context_length": 64,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": vocab,
        "tokenizer.ggml.token_type": [3, 3, 3, 1, 1], "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (5, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
              "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (32, 32),
              "blk.0.attn_v.weight": (32, 32), "blk.0.attn_output.weight": (32, 32), "blk.0.ffn_gate.weight": (32, 32),
              "blk.0.ffn_up.weight": (32, 32), "blk.0.ffn_down.weight": (32, 32)}
    tensors = [(n, rng.standard_normal(s).astype(np.float32).view(np.uint8).ravel(), GGMLType.F32, s)
               for n, s in shapes.items()]
    write_gguf(path, meta, tensors)
    return path


def create_from_gguf(http: httpx.Client, name: str, path: Path) -> None:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    r = http.post("/api/create", json={"model": name, "files": {path.name: digest}, "stream": False})
    assert r.status_code == 200, r.text


class PeakRSS:
    """The largest resident size of a process, sampled every 10 ms while in the with block."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_post(server, path: str, body: dict) -> tuple[httpx.Response, float]:
    with server.http(timeout=120) as http:
        started = time.monotonic()
        r = http.post(path, json=body)
        return r, time.monotonic() - started


def chat_while_polling_version(server, body: dict, path: str = "/api/chat"
                               ) -> tuple[httpx.Response, float, list[float]]:
    """POST body to path in a thread; meanwhile time /api/version, again and again until it ends."""
    result: dict = {}

    def chat() -> None:
        result["response"], result["seconds"] = timed_post(server, path, body)

    thread = threading.Thread(target=chat)
    thread.start()
    versions = []
    with server.http(timeout=120) as http:
        time.sleep(0.05)
        while True:
            started = time.monotonic()
            assert http.get("/api/version").status_code == 200
            versions.append(time.monotonic() - started)
            if not thread.is_alive():
                break
            time.sleep(0.05)
    thread.join()
    return result["response"], result["seconds"], versions


def check_model(server, model: str, error: str) -> None:
    """/api/show answers 200 and the chat the template's error (naming `error`), in time, with
    the server's memory bounded and its event loop free."""
    with PeakRSS(server.proc.pid) as rss:
        show, show_seconds = timed_post(server, "/api/show", {"model": model})
        chat, chat_seconds, versions = chat_while_polling_version(
            server, {"model": model, "messages": CHAT, "stream": False, "options": {"num_predict": 1}})
        oai, oai_seconds, oai_versions = chat_while_polling_version(
            server, {"model": model, "messages": CHAT, "max_tokens": 1}, path="/v1/chat/completions")
    assert show.status_code == 200, show.text
    assert show.json()["capabilities"] == ["completion"]
    assert show_seconds < SECONDS, f"/api/show took {show_seconds:.1f}s"
    # The model's own template fails: a 400 (Ollama says 500; a client would retry that), with
    # the template's message (the limit it hit), never a RecursionError or a MemoryError.
    assert chat.status_code == 400, chat.text
    assert chat.json()["error"].startswith("model template: ") and error in chat.json()["error"], chat.text
    assert chat_seconds < SECONDS, f"/api/chat took {chat_seconds:.1f}s"
    assert oai.status_code == 400 and error in oai.text, oai.text
    assert oai_seconds < SECONDS, f"/v1/chat/completions took {oai_seconds:.1f}s"
    slowest = max(versions + oai_versions)
    assert slowest < VERSION_SECONDS, f"/api/version took {slowest:.2f}s during the chat"
    assert rss.peak < MAX_RSS, f"the server reached {rss.peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("bomb", list(JINJA_BOMBS))
def test_a_jinja_chat_template_bomb_is_refused_in_time(server, tmp_path, bomb):
    template, error = JINJA_BOMBS[bomb]
    with server.http(timeout=120) as http:
        create_from_gguf(http, f"bomb-{bomb}", tiny_gguf(tmp_path / "m.gguf", template))
    check_model(server, f"bomb-{bomb}", error)


@pytest.mark.parametrize("depth", list(DEEP_GO))
def test_a_deeply_nested_go_template_in_the_store_is_refused_in_time(server, tmp_path, depth):
    template, error = DEEP_GO[depth]
    with server.http(timeout=120) as http:
        create_from_gguf(http, "plain", tiny_gguf(tmp_path / "m.gguf"))
    # As if pulled: the template layer goes into the store without /api/create's check.
    store = Store(server.models, hash_cache=None)
    manifest = store.read_manifest("plain")
    layer = store.add_layer(template.encode(), MediaType.TEMPLATE)
    store.write_manifest(f"deep-{depth}", store.read_config("plain", manifest), [*manifest.layers, layer])
    check_model(server, f"deep-{depth}", error)
    # The model with a sane template still chats.
    ok, seconds = timed_post(server, "/api/chat", {"model": "plain", "messages": CHAT, "stream": False,
                                                    "options": {"num_predict": 1}})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("depth", list(DEEP_GO))
def test_a_deeply_nested_go_template_is_refused_by_create_and_as_an_override(server, tmp_path, depth):
    template, error = DEEP_GO[depth]
    with server.http(timeout=120) as http:
        create_from_gguf(http, "plain", tiny_gguf(tmp_path / "m.gguf"))
    with PeakRSS(server.proc.pid) as rss:
        created, create_seconds = timed_post(server, "/api/create", {"model": f"deep-create-{depth}", "from": "plain",
                                                                    "template": template, "stream": False})
        generated, generate_seconds, versions = chat_while_polling_version(
            server, {"model": "plain", "prompt": "ab", "template": template, "stream": False,
                     "options": {"num_predict": 1}}, path="/api/generate")
    assert created.status_code == 400, created.text
    assert created.json()["error"].startswith("template error: ") and error in created.json()["error"]
    assert create_seconds < SECONDS, f"/api/create took {create_seconds:.1f}s"
    with server.http() as http:
        assert http.post("/api/show", json={"model": f"deep-create-{depth}"}).status_code == 404
    assert generated.status_code == 400, generated.text
    assert generated.json()["error"].startswith("request template: ") and error in generated.json()["error"]
    assert generate_seconds < SECONDS, f"/api/generate took {generate_seconds:.1f}s"
    assert max(versions) < VERSION_SECONDS, f"/api/version took {max(versions):.2f}s during the generate"
    assert rss.peak < MAX_RSS, f"the server reached {rss.peak / 2**20:.0f} MiB"
