"""Several sequences batched together on a real model: each gets what it gets alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from realmodels import real_model

from pollama.debug.steps import StepEngine
from pollama.runner.generation import Done, GenerateOptions, Piece
from pollama.runner.engine import common_prefix
from pollama.runner.parallel import EngineClosed, ParallelEngine
from pollama.sample import SamplerOptions, logprobs

GREEDY = SamplerOptions(temperature=0.0, repeat_penalty=1.0)
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
    "The three primary colors are",
    "List of the planets of the solar system: Mercury,",
    "import numpy as np\nx = np.arange(10)\n",
]


def collect(job):
    events = list(job)
    assert isinstance(events[-1], Done) and all(isinstance(e, Piece) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1]


@pytest.fixture(scope="module")
def alone():
    """Each prompt's greedy continuation, run on its own in plain one-token steps (no drafts)."""
    out = {}
    with ParallelEngine(real_model("smollm2"), num_ctx=256) as engine:
        for prompt in PROMPTS:
            ids = engine.tokenizer.encode(prompt)
            out[prompt] = collect(engine.submit(ids, GenerateOptions(num_predict=32, sampler=GREEDY, draft_num_predict=0)))
    return out


@pytest.mark.parametrize("num_parallel", [4, 2])
def test_batched_sequences_equal_their_solo_runs(alone, num_parallel):
    """More requests than slots, submitted at once from several threads: every output equals
    the solo run token for token (the batch changes no logit: see Context.attention groups)."""
    with ParallelEngine(real_model("smollm2"), num_parallel=num_parallel, num_ctx=256) as engine:
        results = {}

        def ask(prompt):
            ids = engine.tokenizer.encode(prompt)
            results[prompt] = collect(engine.submit(ids, GenerateOptions(num_predict=32, sampler=GREEDY)))

        threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engine.busy() == 0
    for prompt in PROMPTS:
        text, done = results[prompt]
        want_text, want = alone[prompt]
        assert done.tokens == want.tokens, prompt
        assert text == want_text
        assert (done.done_reason, done.eval_count) == (want.done_reason, 32)
        # The whole prompt is counted, as current Ollama does, whatever a slot held of it.
        assert done.prompt_eval_count == want.prompt_eval_count == len(want.tokens) - 32
        assert 0 <= done.prompt_cached < done.prompt_eval_count and want.prompt_cached == 0
        assert done.prompt_eval_duration > 0 and done.eval_duration > 0


def test_prefix_reuse_cancel_and_limits():
    with ParallelEngine(real_model("smollm2"), num_parallel=2, num_ctx=128) as engine:
        tok = engine.tokenizer
        first = tok.encode("The capital of France is")
        _, done = collect(engine.submit(first, GenerateOptions(num_predict=4, sampler=GREEDY)))
        assert (done.prompt_eval_count, done.prompt_cached) == (len(first), 0)
        # The next turn starts with the whole previous exchange: only the new tokens are
        # evaluated (and the last generated one, which was sampled but never run); the count
        # is the whole prompt's, as current Ollama reports it.
        follow = done.tokens + tok.encode(" And of Spain?", add_special=False)
        _, again = collect(engine.submit(follow, GenerateOptions(num_predict=4, sampler=GREEDY)))
        assert (again.prompt_eval_count, again.prompt_cached) == (len(follow), len(done.tokens) - 1)

        # forget() waits for the running job (its cache is not emptied under it), then the
        # next prompt is evaluated whole, as on a fresh engine.
        events = iter(engine.submit(first, GenerateOptions(num_predict=8, sampler=GREEDY)))
        started = next(events)  # the job runs
        engine.forget()
        ran = [started, *events][-1]
        assert ran.eval_count == 8 and ran.tokens[:len(done.tokens)] == done.tokens
        _, fresh = collect(engine.submit(follow, GenerateOptions(num_predict=4, sampler=GREEDY)))
        assert (fresh.prompt_eval_count, fresh.prompt_cached) == (len(follow), 0)

        # A cancelled job frees its slot within a step; both slots then serve new jobs.
        long_jobs = [engine.submit(first, GenerateOptions(num_predict=100_000, sampler=GREEDY)) for _ in range(2)]
        for job in long_jobs:
            next(iter(job))
            job.cancel()
        started = time.monotonic()
        _, quick = collect(engine.submit(first, GenerateOptions(num_predict=3, sampler=GREEDY)))
        assert quick.eval_count == 3 and time.monotonic() - started < 30
        for job in long_jobs:
            assert all(isinstance(e, Piece) for e in job)  # the stream ends, without a Done
        assert engine.busy() == 0

        # Without shift, the context limit ends a generation with "length" (with it, see
        # test_context_shift.py).
        _, full = collect(engine.submit(first, GenerateOptions(num_predict=-1, sampler=GREEDY, shift=False)))
        assert full.done_reason in ("length", "stop") and len(full.tokens) <= 128
        _, none = collect(engine.submit(first, GenerateOptions(num_predict=0, sampler=GREEDY)))
        assert none.eval_count == 0 and none.tokens == first

        for bad, match in (([], "empty prompt"), ([1] * 128, "does not fit"), ([10**9], "outside the vocabulary")):
            with pytest.raises(ValueError, match=match):
                engine.submit(bad)


def test_a_new_conversation_takes_an_empty_slot_not_a_finished_conversations():
    # Two chats share their first tokens (a system prompt). With a slot standing empty, the
    # second must not take the first's slot for that shared start: the first's next turn
    # then finds its whole exchange cached.
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    with ParallelEngine(real_model("smollm2"), num_parallel=2, num_ctx=256) as engine:
        tok = engine.tokenizer
        options = GenerateOptions(num_predict=4, sampler=GREEDY)
        _, ann = collect(engine.submit(tok.encode(system + "My name is Ann."), options))
        _, bob = collect(engine.submit(tok.encode(system + "My name is Bob."), options))
        assert bob.prompt_cached == 0  # the empty slot, not Ann's (which shares the system prompt)
        follow = ann.tokens + tok.encode("<|im_end|>\n<|im_start|>user\nAnd then?", add_special=False)
        _, again = collect(engine.submit(follow, options))
        assert again.prompt_cached == len(ann.tokens) - 1
        # Both slots now hold a conversation and a third shares as much with each: it takes
        # the least recently used (Bob's), and Ann's goes on cached.
        _, cid = collect(engine.submit(tok.encode(system + "My name is Cid."), options))
        assert cid.prompt_cached == common_prefix(bob.tokens, tok.encode(system + "My name is Cid."))
        _, ann3 = collect(engine.submit(again.tokens + tok.encode(" Ok.", add_special=False), options))
        assert ann3.prompt_cached == len(again.tokens) - 1


def test_logprobs_are_the_models_distribution():
    with ParallelEngine(real_model("smollm2"), num_parallel=2, num_ctx=128) as engine:
        ids = engine.tokenizer.encode("The capital of France is")
        job = engine.submit(ids, GenerateOptions(num_predict=5, sampler=GREEDY, logprobs=True, top_logprobs=3))
        events = list(job)
        entries = [entry for e in events if isinstance(e, Piece) for entry in e.logprobs]
        done = events[-1]
    assert len(entries) == 5
    generated = done.tokens[len(ids):]
    with StepEngine(real_model("smollm2"), num_ctx=128) as engine:  # the same steps, alone
        rows = [engine.prefill(ids)[0]] + [engine.decode(t) for t in generated[:-1]]
    for i, entry in enumerate(entries):
        token = generated[i]
        want, top = logprobs(rows[i], token, 3)
        assert entry["logprob"] == pytest.approx(want, abs=1e-4)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx([lp for _, lp in top], abs=1e-4)
        assert bytes(entry["bytes"]) == engine.tokenizer.token_piece(token, special=True)
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]


def test_close_ends_running_jobs_with_an_error():
    engine = ParallelEngine(real_model("smollm2"), num_parallel=1, num_ctx=128)
    ids = engine.tokenizer.encode("Hello")
    running = engine.submit(ids, GenerateOptions(num_predict=100_000, sampler=GREEDY))
    waiting = engine.submit(ids, GenerateOptions(num_predict=5, sampler=GREEDY))
    next(iter(running))
    engine.close()
    for job in (running, waiting):
        with pytest.raises(EngineClosed):
            list(job)
    with pytest.raises(EngineClosed):
        engine.submit(ids)


def test_many_sequences_share_one_forward_pass(monkeypatch):
    """Decoding N sequences runs one model pass per step, not N."""
    with ParallelEngine(real_model("smollm2"), num_parallel=4, num_ctx=128) as engine:
        sizes = []
        run = engine.engine.run

        def counting_run(batch, plans):
            sizes.append(len(batch))
            return run(batch, plans)

        monkeypatch.setattr(engine.engine, "run", counting_run)
        ids = engine.tokenizer.encode("Count: one, two,")
        jobs = [engine.submit(ids, GenerateOptions(num_predict=10, sampler=GREEDY)) for _ in range(4)]
        for job in jobs:
            collect(job)
    assert max(sizes) >= 4 and len(sizes) < 4 * 10
    assert np.count_nonzero(np.array(sizes) == 4) >= 5  # steps decoding all four at once
