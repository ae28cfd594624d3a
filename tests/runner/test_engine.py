"""Generation on a real model through the one decode loop (ParallelEngine, one slot): prefill
in chunks, prefix reuse, counts and stops; and StepEngine's single-sequence forward passes."""

from __future__ import annotations

import numpy as np
import pytest

from pollama.debug.steps import StepEngine
from pollama.runner.generation import Done, GenerateOptions, Piece
from pollama.runner.parallel import ParallelEngine
from pollama.sample import SamplerOptions
from realmodels import real_model

GREEDY = SamplerOptions(temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def engine():
    with ParallelEngine(real_model("smollm2"), num_ctx=512, num_batch=16) as e:
        yield e


def run(engine, prompt, **options):
    events = list(engine.submit(prompt, GenerateOptions(sampler=GREEDY, **options)))
    assert isinstance(events[-1], Done) and all(isinstance(e, Piece) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1]


def test_chunked_prefill_and_counts(engine):
    prompt = engine.tokenizer.encode("The capital of France is Paris. " * 6)  # > num_batch tokens
    assert len(prompt) > 2 * engine.engine.num_batch
    text, done = run(engine, prompt, num_predict=5)
    assert done.done_reason == "length" and done.eval_count == 5 and done.prompt_cached == 0
    assert done.prompt_eval_count == len(prompt) and done.prompt_eval_duration > 0 and done.eval_duration > 0
    assert done.tokens[: len(prompt)] == prompt and len(done.tokens) == len(prompt) + 5
    assert engine.tokenizer.decode(done.tokens[len(prompt) :]) == text


def test_prefix_is_reused_and_only_new_tokens_are_evaluated(engine):
    first = engine.tokenizer.encode("The capital of France is")
    _, done = run(engine, first, num_predict=3)
    follow_up = done.tokens + engine.tokenizer.encode(" And Germany's is")
    _, again = run(engine, follow_up, num_predict=3)
    # Everything but the last generated token (never evaluated) was in the cache already;
    # the count is the whole prompt's, as current Ollama reports it.
    assert (again.prompt_eval_count, again.prompt_cached) == (len(follow_up), len(done.tokens) - 1)


def test_prefix_reuse_gives_the_same_logits_as_a_fresh_prompt():
    """On the float32 reference backend, where batch shapes do not change rounding."""
    with StepEngine(real_model("smollm2"), backend="torch", num_ctx=128) as e:
        a = e.tokenizer.encode("One, two, three, four")
        b = e.tokenizer.encode("One, two, three, five, six")
        e.prefill(a)
        reused, evaluated = e.prefill(b)
        assert evaluated < len(b)
        e.reset()
        fresh, _ = e.prefill(b)
    np.testing.assert_allclose(reused, fresh, atol=1e-4)


def test_stop_string_and_eos(engine):
    prompt = engine.tokenizer.encode("1, 2, 3, 4,")
    text, done = run(engine, prompt, num_predict=30, stop=[", 7"])
    assert done.done_reason == "stop" and text == " 5, 6"
    # An end-of-generation token ends the answer without appearing in it.
    chat = engine.tokenizer.encode("<|im_start|>user\nReply with one word: yes or no.<|im_end|>\n<|im_start|>assistant\n")
    text, done = run(engine, chat, num_predict=64)
    assert done.done_reason == "stop" and done.eval_count < 64
    assert "<|im_end|>" not in text and done.tokens[-1] not in engine.tokenizer.eog_ids


def test_bad_tokens_are_refused_and_the_engine_recovers(engine):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([1, 2, 10**6])
    with pytest.raises(ValueError, match="empty prompt"):
        engine.submit([])
    with pytest.raises(ValueError, match="does not fit"):
        engine.submit([1] * 600)
    prompt = engine.tokenizer.encode("The capital of France is")
    text, _ = run(engine, prompt, num_predict=2)
    assert text == " Paris."


def test_seeded_sampling_repeats(engine):
    prompt = engine.tokenizer.encode("Once upon a time")
    options = GenerateOptions(num_predict=12, sampler=SamplerOptions(temperature=1.0, seed=42))
    outs = [[p.token for p in engine.submit(prompt, options) if isinstance(p, Piece)] for _ in range(2)]
    assert outs[0] == outs[1]


def test_kv_cache_type_option_and_env(monkeypatch):
    from pollama.fs.ggml_types import GGMLType
    from pollama.runner.engine import kv_cache_dtype

    assert kv_cache_dtype("f32") == GGMLType.F32 and kv_cache_dtype(None) == GGMLType.F16
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "f32")
    assert kv_cache_dtype(None) == GGMLType.F32
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "q8_0")  # not available here: f16, as Ollama falls back
    assert kv_cache_dtype(None) == GGMLType.F16
    with StepEngine(real_model("smollm2"), num_ctx=64, kv_cache_type="f32") as e:
        assert all(t.dtype == GGMLType.F32 for c in e.cache.caches for t in c.k.values())


def test_common_prefix_is_the_longest_shared_start():
    """Against the standard library's commonprefix (which works on any sequences), on random
    sequences with differences anywhere, including none and at the very start or end."""
    import os
    import random

    from pollama.runner.engine import common_prefix

    rng = random.Random(0)
    for _ in range(5000):
        a = [rng.randint(0, 2) for _ in range(rng.randint(0, 40))]
        b = a[:rng.randint(0, len(a))] + [rng.randint(0, 2) for _ in range(rng.randint(0, 10))]
        assert common_prefix(a, b) == common_prefix(b, a) == len(os.path.commonprefix([a, b]))
