"""Context shift and prompt truncation: Ollama's rules (window.py), and the cache's RoPE
re-rotation of moved keys, checked against evaluating the same tokens fresh (tests/contextshift.py).

Why the fresh evaluation is at keep = 0: after a shift, the K/V of the tokens that moved were
computed while they could see the tokens now dropped, which a fresh evaluation of the kept
tokens never saw; that difference is what a context shift accepts, not a bug. With nothing
kept before the dropped tokens, the moved tokens saw only each other, at the same distances,
and attention with RoPE depends only on distances: their K/V must be those of a fresh
evaluation at their new positions, up to rounding, if (and only if) the keys were turned right.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from pollama.debug.steps import StepEngine
from pollama.runner import window
from pollama.runner.engine import make_backend
from pollama.runner.generation import Done, GenerateOptions
from pollama.runner.parallel import ParallelEngine
from pollama.sample import SamplerOptions
from contextshift import logits_after, unturned
from realmodels import real_model

GREEDY = SamplerOptions(temperature=0.0, repeat_penalty=1.0)
TEXT = ("The history of the city begins in the year 1200, when a small group of traders settled on the "
        "river bank and built")
DROPPED = 70  # positions the text starts at before the shift moves it to 0

# -- Ollama's arithmetic -------------------------------------------------------------------------


def test_keep_count_follows_num_keep_bos_and_the_context():
    assert window.keep_count(4, 100, 2048, adds_bos=True) == 5  # llama-server's n_keep + BOS
    assert window.keep_count(4, 100, 2048, adds_bos=False) == 4
    assert window.keep_count(-1, 100, 2048, adds_bos=True) == 100  # negative: the whole prompt
    assert window.keep_count(-1, 5000, 2048, adds_bos=False) == 2047  # always one token to drop
    assert window.keep_count(4, 2, 2048, adds_bos=True) == 2  # never more than the prompt


def test_truncated_prompt_keeps_its_start_and_end_as_ollama_cuts_it():
    prompt = list(range(1000))
    cut = window.truncate_prompt(prompt, 256, keep=5)
    # Ollama's contextShiftPromptLimit: num_ctx - max((num_ctx - keep) / 2, 1) = 256 - 125.
    assert len(cut) == 131 and cut[:5] == prompt[:5] and cut[5:] == prompt[-126:]
    assert window.truncate_prompt(prompt, 256, keep=255) == prompt[:255]  # keep all it can, drop the rest


def test_shift_frees_half_of_what_is_not_kept():
    # Ollama's ShiftDiscard: drop until max((num_ctx - keep) / 2, 1) cells are free.
    assert window.shift_discard(list(range(127)), keep=5, num_ctx=128) == 60  # 1 free + 60 = 61
    assert window.shift_discard(list(range(127)), keep=126, num_ctx=128) == 0  # 1 free already
    assert window.shift_discard(list(range(10)), keep=10, num_ctx=128) == 0


# -- the cache's re-rotation ---------------------------------------------------------------------


# The same tokens evaluated fresh at other positions differ by rounding (RoPE's angles round
# differently): on ggml's quantized models through 8-bit activations up to 1.41 (Gemma 3,
# measured), on torch by 4.6e-5. A shift must be no worse than that; keys not turned are off
# by 11 to 22.
CASES = [("smollm2", "ggml", True), ("smollm2", "ggml", False), ("gemma3-270m", "ggml", True),
         ("qwen2.5-coder-0.5b", "ggml", True), ("smollm2", "torch", None), ("gemma3-270m", "torch", None)]


@pytest.mark.parametrize("model,backend,flash", CASES)
def test_shifted_keys_equal_a_fresh_evaluation(model, backend, flash):
    chosen = make_backend(backend, flash_attention=flash) if backend == "ggml" else backend
    with StepEngine(real_model(model), backend=chosen, num_ctx=256, num_batch=256) as engine:
        tail = engine.tokenizer.encode(TEXT, add_special=False)
        (after,) = engine.tokenizer.encode(" a", add_special=False)
        fresh = logits_after(engine, tail, 0, after, shift=False)
        elsewhere = logits_after(engine, tail, DROPPED, after, shift=False)  # the rounding of other positions
        shifted = logits_after(engine, tail, DROPPED, after, shift=True)
        not_turned = logits_after(engine, tail, DROPPED, after, shift=True, turn=unturned)
    noise = float(np.abs(elsewhere - fresh).max())
    error = float(np.abs(shifted - fresh).max())
    if backend == "torch":  # measured 3.4e-5 (SmolLM2), 4.0e-5 (Gemma 3)
        assert error < 1e-4, error
    else:  # measured 0.55 / 1.16 / 0.39 against noise of 0.44 / 1.41 / 0.35
        assert error < max(2 * noise, 0.1), (error, noise)
    assert shifted.argmax() == fresh.argmax()
    assert float(np.abs(not_turned - fresh).max()) > 5.0  # the test sees keys that were not turned


# -- generation past the context -----------------------------------------------------------------


@pytest.fixture(scope="module")
def counting():
    with ParallelEngine(real_model("smollm2"), num_ctx=128, num_parallel=2) as engine:
        yield engine, engine.tokenizer.encode("Count from 1 to 500: 1, 2, 3, 4, 5,")


def _run(engine, prompt, **options) -> tuple[str, Done]:
    events = list(engine.submit(prompt, GenerateOptions(sampler=GREEDY, **options)))
    return "".join(e.text for e in events[:-1]), events[-1]


def _counts_on(text: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    return numbers == list(range(6, 6 + len(numbers)))


def test_greedy_generation_goes_on_past_the_context_and_stays_coherent(counting):
    engine, prompt = counting
    text, done = _run(engine, prompt, num_predict=4 * engine.num_ctx)
    assert done.done_reason == "length" and done.eval_count == 4 * engine.num_ctx
    # Counting goes on through every shift (with keys not turned it repeats "6," at the first).
    assert _counts_on(text) and text.rstrip(",").endswith("127"), text[-200:]


def test_without_shift_a_full_context_ends_the_generation(counting):
    engine, prompt = counting
    text, done = _run(engine, prompt, num_predict=4 * engine.num_ctx, shift=False)
    # (the last token sampled is never evaluated: the context holds all but it)
    assert done.done_reason == "length" and len(prompt) + done.eval_count == engine.num_ctx
    assert _counts_on(text)


def test_a_shifting_sequence_beside_another_gives_its_solo_tokens(counting):
    """The moved K/V sit where a sequence at those positions would: batching stays exact."""
    engine, prompt = counting
    _, solo = _run(engine, prompt, num_predict=300)
    other = engine.tokenizer.encode("Once upon a time, in a land far away,")
    jobs = [engine.submit(prompt, GenerateOptions(sampler=GREEDY, num_predict=300)),
            engine.submit(other, GenerateOptions(sampler=GREEDY, num_predict=250))]
    together = [list(job)[-1] for job in jobs]
    assert together[0].tokens == solo.tokens
