"""One bad request must not crash a runner or exhaust memory (pollama/runner/limits.py).

Against a real `pollama serve` with SmolLM2: options that could only crash the runner, fill
its memory or spin its CPU are a 400 naming the option, and the very runner process that
served the request before serves the next; a prompt of 50 MB is refused in well under two
seconds without the runner seeing it (nor the server ballooning); chats drop what cannot
fit without tokenizing it, and count each prompt once. In-process tests cover what a
server cannot be made to send: the runner's own checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pollama.runner import limits
from pollama.server.errors import APIError

SMALL = {"temperature": 0, "num_predict": 2}
BIG = 50 << 20  # characters: the attacker's 50 MB prompt


def hi(http, **options):
    return http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                            "options": {**SMALL, **options}})


@pytest.fixture(scope="module")
def runner_pid(server, smollm2_path):
    """The pid of SmolLM2's runner, loaded by a first request."""
    with server.http() as http:
        r = hi(http)
        assert r.status_code == 200, r.text
    (pid,) = server.runner_pids(str(smollm2_path))
    return pid


def assert_same_runner_serves(server, smollm2_path, pid):
    with server.http() as http:
        r = hi(http)
    assert r.status_code == 200 and r.json()["eval_count"] == 2, r.text
    assert server.runner_pids(str(smollm2_path)) == [pid], "the runner was restarted or replaced"


# --- options -----------------------------------------------------------------------------

ABSURD = [
    ({"num_thread": 1_000_000}, "num_thread"),  # the attacker's: SIGSEGV in ggml before
    ({"num_thread": limits.max_threads() + 1}, "num_thread"),
    ({"num_thread": -1}, "num_thread"),
    ({"num_ctx": 1 << 21}, "num_ctx"),
    ({"num_ctx": -4096}, "num_ctx"),
    ({"num_batch": 0}, "num_batch"),
    ({"num_batch": -512}, "num_batch"),
    ({"num_predict": -3}, "num_predict"),
    ({"num_predict": 1e30}, "num_predict"),
    ({"num_gpu": 1 << 40}, "num_gpu"),
    ({"main_gpu": -(1 << 40)}, "main_gpu"),
    ({"num_keep": 1 << 40}, "num_keep"),
    ({"seed": 1e30}, "seed"),
    ({"top_k": 1e30}, "top_k"),
    ({"repeat_last_n": -1e30}, "repeat_last_n"),
    ({"stop": ["\n"] * (limits.MAX_STOP_STRINGS + 1)}, "stop"),
    ({"stop": ["x" * (1 << 20)]}, "stop"),
    ({"temperature": "hot"}, "temperature"),
]


@pytest.mark.parametrize("options, name", ABSURD,
                         ids=[f"{next(iter(o))}={str(next(iter(o.values())))[:12]}" for o, _ in ABSURD])
def test_absurd_option_is_a_400_naming_it_and_the_runner_lives_on(server, smollm2_path, runner_pid, options, name):
    with server.http() as http:
        r = hi(http, **options)
    assert r.status_code == 400, (options, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert f'"{name}"' in error, error
    assert "must be" in error or "type" in error, error  # it says what is allowed
    assert_same_runner_serves(server, smollm2_path, runner_pid)


def test_every_route_checks_its_options(server, smollm2_path, runner_pid):
    options = {"num_thread": 1_000_000}
    with server.http() as http:
        for path, body in (
            ("/api/generate", {"model": "smollm2", "prompt": "Hi", "options": options}),
            ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "options": options}),
            ("/api/tokenize", {"model": "smollm2", "content": "Hi", "options": options}),
            ("/api/embed", {"model": "smollm2", "input": "Hi", "options": options}),
        ):
            r = http.post(path, json=body)
            assert r.status_code == 400 and "num_thread" in r.json()["error"], (path, r.text)
        # The OpenAI routes take no options but their stop strings.
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
                                                   "stop": ["x"] * 5000})
        assert r.status_code == 400 and '"stop"' in r.json()["error"]["message"], r.text
        r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi", "stop": "y" * 100_000})
        assert r.status_code == 400 and '"stop"' in r.json()["error"]["message"], r.text
    assert_same_runner_serves(server, smollm2_path, runner_pid)


# Odd values Ollama accepts keep working: they cannot crash, fill memory or spin. (A num_gpu of
# 0 or more is a load option that reloads, as in Ollama; a negative one is its default.)
ODD = [
    {"temperature": 5}, {"temperature": -1}, {"top_k": 10**12}, {"top_k": -3}, {"top_p": 7.5}, {"top_p": -1},
    {"min_p": 2}, {"typical_p": -0.5}, {"typical_p": 0.2}, {"repeat_last_n": -1000}, {"repeat_last_n": 10**12},
    {"repeat_penalty": 1e30}, {"repeat_penalty": -2}, {"presence_penalty": -1e30}, {"frequency_penalty": 1e30},
    {"seed": (1 << 63) - 1}, {"seed": -(1 << 63)}, {"num_keep": -1}, {"num_gpu": -7}, {"main_gpu": 3},
    {"stop": ["\n"] * limits.MAX_STOP_STRINGS}, {"stop": ["z" * limits.MAX_STOP_CHARS, "<|im_end|>"]},
    {"num_thread": 0}, {"num_ctx": 0},
]


def test_odd_values_ollama_accepts_still_work_on_the_same_runner(server, smollm2_path, runner_pid):
    with server.http() as http:
        for options in ODD:
            r = hi(http, **options)
            assert r.status_code == 200, (options, r.text[:300])
            assert r.json()["done"] is True
    assert_same_runner_serves(server, smollm2_path, runner_pid)


# --- 50 MB prompts --------------------------------------------------------------------------

class PeakRSS:
    """The most a process's resident memory rose above where it was, sampled while in the block."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.rise = 0

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.hwm_reset = self._reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _reset_hwm(self) -> bool:
        try:  # "5" resets VmHWM to the current RSS (Linux): then the kernel's own peak counts too
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _hwm(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        peak = max(self.peak, self._hwm() if self.hwm_reset else 0)
        self.rise = peak - self.base


BIG_CASES = ["generate", "generate-raw", "generate-system", "chat", "chat-system", "chat-no-truncate",
             "openai-chat", "openai-completions", "tokenize"]


def big_bodies():
    big = "a" * BIG
    return [
        ("/api/generate", {"model": "smollm2", "prompt": big, "stream": False}),
        ("/api/generate", {"model": "smollm2", "prompt": big, "raw": True, "stream": False}),
        ("/api/generate", {"model": "smollm2", "prompt": "Hi", "system": big, "stream": False}),
        ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": big}], "stream": False}),
        ("/api/chat", {"model": "smollm2", "messages": [{"role": "system", "content": big},
                                                        {"role": "user", "content": "Hi"}], "stream": False}),
        ("/api/chat", {"model": "smollm2", "truncate": False, "stream": False,
                       "messages": [{"role": "user", "content": big[: BIG // 2]}, {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": big[: BIG // 2]}]}),
        ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": big}]}),
        ("/v1/completions", {"model": "smollm2", "prompt": big}),
        ("/api/tokenize", {"model": "smollm2", "content": big}),
    ]


@pytest.mark.parametrize("case", range(len(BIG_CASES)), ids=BIG_CASES)
def test_a_50mb_prompt_is_refused_fast_and_the_runner_never_sees_it(server, smollm2_path, runner_pid, case):
    path, body = big_bodies()[case]
    data = json.dumps(body).encode()  # encoded beforehand: the time is the server's
    elapsed = []
    with server.http() as http, PeakRSS(runner_pid) as runner, PeakRSS(server.proc.pid) as srv:
        while len(elapsed) < 2 and min(elapsed, default=9) >= 2.0:  # a second try if the machine was busy
            started = time.monotonic()
            r = http.post(path, content=data, headers={"Content-Type": "application/json"})
            elapsed.append(time.monotonic() - started)
            assert r.status_code == 400, (path, r.status_code, r.text[:300])
            error = r.json()["error"]
            message = error["message"] if isinstance(error, dict) else error
            assert "exceeds the context length" in message and "cannot fit in" in message, message
    assert min(elapsed) < 2.0, f"{path}: refused after {' and '.join(f'{t:.2f}s' for t in elapsed)}"
    assert runner.rise < 200 << 20, f"runner memory rose {runner.rise >> 20} MiB"
    # The server holds the body while it reads and parses it (a few copies of 50 MB), no more.
    assert srv.rise < 400 << 20, f"server memory rose {srv.rise >> 20} MiB"
    assert_same_runner_serves(server, smollm2_path, runner_pid)


def test_old_huge_messages_are_dropped_untokenized(server, smollm2_path, runner_pid):
    """Truncation drops old messages that cannot fit without rendering them into a prompt that
    is tokenized (Ollama would tokenize the whole 48 MB chat, then all but its first message)."""
    big = "lorem ipsum " * (2 << 20)  # 24 MB
    body = {"model": "smollm2", "stream": False, "_debug_render_only": True, "messages": [
        {"role": "user", "content": big}, {"role": "assistant", "content": big},
        {"role": "user", "content": "Say hi"}]}
    data = json.dumps(body).encode()
    with server.http() as http, PeakRSS(runner_pid) as runner:
        started = time.monotonic()
        r = http.post("/api/chat", content=data, headers={"Content-Type": "application/json"})
        elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text[:300]
    rendered = r.json()["_debug_info"]["rendered_template"]
    assert "Say hi" in rendered and "lorem" not in rendered
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert runner.rise < 200 << 20, f"runner memory rose {runner.rise >> 20} MiB"
    assert_same_runner_serves(server, smollm2_path, runner_pid)


def test_a_long_chat_is_truncated_in_few_countings(server):
    """5000 messages: Ollama's truncation tokenizes the remaining chat once per message dropped."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: " + "lorem ipsum " * 8}
                for i in range(5000)]
    with server.http() as http:
        started = time.monotonic()
        r = http.post("/api/chat", json={"model": "smollm2", "messages": messages, "stream": False,
                                         "_debug_render_only": True})
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text[:300]
        rendered = r.json()["_debug_info"]["rendered_template"]
        tokens = http.post("/api/tokenize", json={"model": "smollm2", "content": rendered}).json()["tokens"]
    assert 3500 < len(tokens) <= 4096  # as much of the end of the chat as fits
    assert "message 4999:" in rendered and "message 4000:" not in rendered
    assert elapsed < 20, f"took {elapsed:.1f}s"


def test_huge_token_lists_are_refused_before_the_runner(server, smollm2_path, runner_pid):
    """A `context` or a /api/detokenize list longer than any context could hold: 400, unsent."""
    tokens = [1000] * (5 << 20)  # 27 MB of JSON; 5M tokens would be ~200 MB in the runner
    with server.http() as http, PeakRSS(runner_pid) as runner:
        for path, body in (("/api/generate", {"model": "smollm2", "prompt": "Hi", "context": tokens, "stream": False}),
                           ("/api/detokenize", {"model": "smollm2", "tokens": tokens})):
            r = http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "too many tokens" in r.json()["error"], (path, r.text[:300])
    assert runner.rise < 50 << 20, f"runner memory rose {runner.rise >> 20} MiB"
    assert_same_runner_serves(server, smollm2_path, runner_pid)


@pytest.fixture(scope="module")
def minilm(server, minilm_folder):
    """all-MiniLM (512 tokens of context) created on the server from its Hugging Face files."""
    import ollama

    client = ollama.Client(host=server.url, timeout=300)
    files = {str(p.relative_to(minilm_folder)): client.create_blob(p) for p in sorted(minilm_folder.rglob("*"))
             if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")}
    assert [p.status for p in client.create(model="minilm", files=files, stream=True)][-1] == "success"
    from pollama.store.store import Store

    return str(Store(server.models, hash_cache=None).resolve("minilm").model_path)


def test_a_50mb_text_to_embed_is_cut_or_refused_untokenized(server, minilm):
    big = "word " * (BIG // 5)
    with server.http() as http:
        assert http.post("/api/embed", json={"model": "minilm", "input": "warm up"}).status_code == 200
        (pid,) = server.runner_pids(minilm)
        for truncate in (True, False):
            data = json.dumps({"model": "minilm", "input": [big, "short"], "truncate": truncate}).encode()
            with PeakRSS(pid) as runner:
                started = time.monotonic()
                r = http.post("/api/embed", content=data, headers={"Content-Type": "application/json"})
                elapsed = time.monotonic() - started
            assert runner.rise < 200 << 20, f"runner memory rose {runner.rise >> 20} MiB"
            if truncate:  # the first 512 tokens, from the first 2 x 512 x 64 characters at most
                assert r.status_code == 200 and len(r.json()["embeddings"]) == 2, r.text[:300]
                assert elapsed < 10, f"took {elapsed:.1f}s"
            else:
                assert r.status_code == 400 and "exceeds the context length" in r.json()["error"], r.text[:300]
                assert elapsed < 2, f"took {elapsed:.1f}s"
        # The cut changes nothing: the vector is the one of the text's first 512 tokens.
        a = http.post("/api/embed", json={"model": "minilm", "input": big}).json()
        b = http.post("/api/embed", json={"model": "minilm", "input": "word " * 1000}).json()
        assert a["prompt_eval_count"] == b["prompt_eval_count"] == 512
        assert a["embeddings"] == b["embeddings"]
    assert server.runner_pids(minilm) == [pid]


# --- in-process: the server's prompt assembly and the runner's own checks -----------------------

@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    from pollama.fs.gguf import GGUFFile
    from pollama.tokenizer import load_tokenizer

    with GGUFFile(smollm2_path) as gguf:
        return load_tokenizer(gguf.metadata)


@pytest.fixture(scope="module")
def smollm2_ref(smollm2_path):
    from pollama.server.models import ModelRef, read_metadata

    metadata, _ = read_metadata(smollm2_path)
    return ModelRef(name="smollm2:latest", model_path=smollm2_path, metadata=metadata)


def test_a_prompt_is_tokenized_once_and_truncation_bisects(smollm2_ref, smollm2_tokenizer):
    from pollama.server.prompt import Specials, chat_prompt

    texts = []

    def tokenize(text):
        texts.append(text)
        return smollm2_tokenizer.encode(text)

    specials = Specials(max_token_chars=limits.max_token_chars(smollm2_tokenizer))
    messages = [{"role": "user", "content": "Hello there"}]
    prompt, _ = chat_prompt(smollm2_ref, messages, num_ctx=4096, truncate=True, tokenize=tokenize, specials=specials)
    assert texts == [prompt]  # counted once; the runner then reuses those tokens (runner/serve.py)

    texts.clear()
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: " + "lorem ipsum " * 8}
            for i in range(1000)]
    prompt, _ = chat_prompt(smollm2_ref, long, num_ctx=4096, truncate=True, tokenize=tokenize, specials=specials)
    assert len(texts) <= 12 and len(set(texts)) == len(texts)  # log2(1000) + 2, no text twice
    assert len(smollm2_tokenizer.encode(prompt)) <= 4096
    # The same answer as Ollama's one-by-one truncation: one more message would not fit.
    from pollama.template.prompt import jinja_chat_prompt

    kept = prompt.count("message ")
    more, _ = jinja_chat_prompt(smollm2_ref.metadata["tokenizer.chat_template"], long[-kept - 1:], truncate=False)
    assert len(smollm2_tokenizer.encode(more)) > 4096


def test_a_message_that_cannot_fit_is_refused_untokenized(smollm2_ref):
    from pollama.server.prompt import Specials, chat_prompt, generate_prompt

    def tokenize(text):
        raise AssertionError("tokenized")

    specials = Specials(max_token_chars=81)
    limit = limits.prompt_char_limit(4096, 81)
    # With truncate, what is always kept may be up to TRUNCATED_CONTEXTS contexts' worth (the
    # runner cuts it to fit), and no more.
    cut = limits.prompt_char_limit(4096, 81, truncate=True)
    for messages, truncate in (([{"role": "user", "content": "x" * (cut + 1)}], True),
                               ([{"role": "system", "content": "x" * cut}, {"role": "user", "content": "hi"}], True),
                               ([{"role": "user", "content": "x" * limit}, {"role": "user", "content": "hi"}], False)):
        with pytest.raises(APIError) as e:
            chat_prompt(smollm2_ref, messages, num_ctx=4096, truncate=truncate, tokenize=tokenize, specials=specials)
        assert e.value.status == 400 and "exceeds the context length" in e.value.message
    with pytest.raises(APIError) as e:
        generate_prompt(smollm2_ref, "x" * (cut + 1), system=None, template=None, suffix="", context_text=None,
                        tokenize=tokenize, num_ctx=4096, specials=specials)
    assert e.value.status == 400


def test_a_huge_num_ctx_on_a_model_without_a_context_length_is_refused(smollm2_ref, monkeypatch):
    from pollama.server.config import ServerConfig
    from pollama.server.models import ModelRef
    from pollama.server.options import request_options

    metadata = {k: v for k, v in smollm2_ref.metadata.items() if not k.endswith("context_length")}
    model = ModelRef(name="nolimit:latest", model_path=smollm2_ref.model_path, metadata=metadata)
    monkeypatch.setattr(limits, "memory_total", lambda: 8 << 30)
    config = ServerConfig(num_parallel=2)
    with pytest.raises(APIError) as e:
        request_options(model, {"num_ctx": 1 << 20}, config)  # 48 GiB of KV cache, and attention
    assert e.value.status == 400 and '"num_ctx"' in e.value.message and "GiB" in e.value.message
    # Without flash attention, num_batch's attention scores are the other half; flash
    # attention (the default) keeps no score matrix.
    assert request_options(model, {"num_ctx": 32768, "num_batch": 32768}, config).spec.num_ctx == 32768
    monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", "0")
    with pytest.raises(APIError):
        request_options(model, {"num_ctx": 32768, "num_batch": 32768}, config)
    assert request_options(model, {"num_ctx": 32768}, config).spec.num_ctx == 32768  # 3 GiB: fine


def test_the_runner_refuses_a_context_beyond_free_memory_before_allocating(smollm2_path, monkeypatch):
    from pollama.errors import ModelError
    from pollama.runner.engine import Engine

    monkeypatch.setattr(limits, "memory_available", lambda: 1 << 30)
    started = time.monotonic()
    with pytest.raises(ModelError, match="num_ctx 1048576 .* more than the 1.0 GiB available"):
        Engine(smollm2_path, num_ctx=1 << 20)
    assert time.monotonic() - started < 30


def test_the_runner_refuses_absurd_num_thread_itself(smollm2_path, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pollama.runner.serve", "--model", str(smollm2_path),
                             "--socket", str(tmp_path / "r.sock"), "--num-thread", "1000000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert proc.wait(60) == 1
    finally:
        proc.stdin.close()
        proc.kill()
    assert "num_thread" in json.loads(line)["error"]


def test_the_runner_tokenizes_a_counted_prompt_once(smollm2_path, monkeypatch):
    from pollama.runner.serve import Model, RequestError, parse_args

    model = Model(parse_args(["--model", str(smollm2_path), "--socket", "unused", "--num-ctx", "512"]))
    try:
        calls = []
        encode = model.tokenizer.encode
        monkeypatch.setattr(model.tokenizer, "encode", lambda *a, **k: calls.append(a) or encode(*a, **k))
        assert model.encode("Hello there") == model.encode("Hello there") and len(calls) == 1
        assert model.char_limit == 512 * max(limits.MIN_CHARS_PER_TOKEN, limits.max_token_chars(model.tokenizer))
        with pytest.raises(RequestError, match="exceeds the context length"):
            model.check_length("the input length", "a" * (model.char_limit + 1))
    finally:
        model.close()


def test_embedding_of_a_huge_text_cuts_before_tokenizing(monkeypatch):
    from pollama.runner.embed import Embedder, InputTooLong

    class Tokenizer:
        sep_id = 2

        def encode(self, text, add_special=True):
            calls.append(len(text))
            return [1] + [5] * (len(text) // 4) + [2]

    calls = []
    embedder = Embedder.__new__(Embedder)
    embedder.tokenizer, embedder.num_ctx = Tokenizer(), 512
    embedder.token_chars = 20
    embedder.char_limit = limits.prompt_char_limit(512, 20)
    ids = embedder.tokenize("a" * BIG, truncate=True)
    assert len(ids) == 512 and ids[-1] == 2 and calls == [2 * embedder.char_limit]
    with pytest.raises(InputTooLong):
        embedder.tokenize("a" * BIG, truncate=False)
    assert len(calls) == 1


def test_num_ctx_beyond_the_models_context_is_clamped_as_in_ollama(server):
    # Last: a new num_ctx reloads the model (another runner), as in Ollama.
    with server.http() as http:
        r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                             "options": {**SMALL, "num_ctx": 1 << 20}})
    assert r.status_code == 200, r.text  # SmolLM2's 8192 tokens
