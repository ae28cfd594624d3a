"""Speculative decoding by prompt lookup: the output is token for token that of plain decoding.

The verification step computes each row as a one-token step would (Batch.rows_apart), so its
logits are bit for bit those of decoding the same tokens one at a time; the engine samples the
rows in order and stops at the first disagreement, EOS, stop string, num_predict or
cancellation, exactly where plain decoding stops.
"""

from __future__ import annotations

import numpy as np
import pytest
from rowsapart import rows_apart_and_one_at_a_time
from realmodels import real_model

from pollama.debug.steps import StepEngine
from pollama.runner.generation import Done, GenerateOptions, Piece
from pollama.runner.parallel import ParallelEngine
from pollama.runner.speculative import PromptLookup, StepCosts, best_draft_count, drafting_allowed, expected_tokens
from pollama.sample import SamplerOptions

GREEDY = SamplerOptions(temperature=0.0)  # Ollama's default repeat_penalty (1.1) stays on: it must not matter

FUNCTION = '''def merge_intervals(intervals):
    """Merge overlapping intervals and return them sorted by start."""
    if not intervals:
        return []
    ordered = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(ordered[0])]
    for start, end in ordered[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return [tuple(pair) for pair in merged]
'''


def chatml(user: str, answer_start: str = "") -> str:
    return (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer_start}")


# Qwen2.5-Coder asked to repeat a function with one identifier renamed; its answer is opened
# with the code fence, so the copy starts at once.
CODE_EDIT = chatml(f"Rename the variable `merged` to `result` in this function and output the whole "
                   f"function, nothing else:\n\n```python\n{FUNCTION}```", "```python\n")
# A RAG-style prompt: the answer quotes its context.
RAG = chatml("Context:\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres "
             "tall and was the tallest man-made structure in the world until 1930.\n\n"
             "Question: When was the Eiffel Tower completed and how tall is it? Answer with a sentence "
             "quoted from the context.")


def run(engine: ParallelEngine, prompt: list[int], **options) -> tuple[str, Done]:
    events = list(engine.submit(prompt, GenerateOptions(sampler=options.pop("sampler", GREEDY), **options)))
    assert isinstance(events[-1], Done) and all(isinstance(e, Piece) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1]


def prime(engine: ParallelEngine, prompt: list[int]) -> None:
    """Leave the prompt in a slot's cache, so the runs compared next start alike: a prompt is
    then evaluated from its last token, which a cold run evaluates in a batch of the whole
    prompt (other kernels, other rounding: the first token's logits could differ)."""
    run(engine, prompt, num_predict=1, draft_num_predict=0)


def assert_cache_holds_exactly(engine: ParallelEngine) -> None:
    """Every slot's cache holds the K/V of its cached items and nothing else (no draft left)."""
    cache = engine.engine.cache
    for slot in engine._slots:
        assert cache.used(slot.seq) == len(slot.cached)
        assert cache.can_keep(slot.seq, len(slot.cached))


def record_verifications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(tokens generated before, drafts, drafts agreed) of every verification step from now on."""
    steps = []
    verify = ParallelEngine._verify

    def recording(self, slot, rows, drafts):
        before, agreed = slot.generation.generated, slot.draft_accepted
        verify(self, slot, rows, drafts)
        steps.append((before, len(drafts), slot.draft_accepted - agreed))

    monkeypatch.setattr(ParallelEngine, "_verify", recording)
    return steps


# -- the lookup itself -------------------------------------------------------------------------

def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    lookup = PromptLookup(max_drafts=4, vocab_size=100)
    tokens = [1, 2, 3, 4, 5, 6, 9, 2, 3, 7, 8, 1, 2, 3]
    assert lookup.lookup(tokens, 4) == []  # not indexed yet: propose() indexes
    assert lookup.propose(tokens, 10, step_cost=FREE) == [4, 5, 6, 9]  # "1 2 3" first: the longest n-gram wins over "2 3"
    tokens += [4]
    assert lookup.propose(tokens, 10, step_cost=FREE) == [5, 6, 9, 2]  # the sequence grew: "2 3 4"
    assert lookup.propose(tokens, 2, step_cost=FREE) == [5, 6]  # no more than asked
    tokens += [6, 9, 2, 3]
    assert lookup.propose(tokens, 10, step_cost=FREE) == [7, 8, 1, 2]  # "9 2 3": the latest occurrence
    assert PromptLookup(4, 100).propose([5, 7, 8, 9, 1, 7, 8], 10, step_cost=FREE) == [9, 1, 7, 8]  # a 2-gram when no 3-gram
    assert PromptLookup(4, 100).propose([1, 2, 3, 50, 60], 10, step_cost=FREE) == []  # an end never seen before
    images = PromptLookup(max_drafts=8, vocab_size=100)
    assert images.propose([1, 2, 3, 1000, 4, 1, 2], 8, step_cost=FREE) == []  # no draft size fits one token
    assert images.lookup([1, 2, 3, 1000, 4, 1, 2], 8) == [3]  # an image placeholder ends the guess


def FREE(drafts: int) -> float:
    """Drafts that cost nothing: any acceptance above 1 - 1/MIN_GAIN pays."""
    return 1.0


def test_draft_length_is_what_pays_at_the_acceptance_seen():
    modelled = StepCosts().relative  # nothing measured: 1 + 0.25 + 0.7·k plain steps
    assert modelled(0) == 1.0 and modelled(4) == pytest.approx(1 + 0.25 + 2.8)
    assert expected_tokens(0.5, 2) == 1 + 0.5 + 0.25
    assert best_draft_count(0.9, modelled, 15) == 0  # 1 + 0.9 tokens for 1.95 steps: a loss
    assert best_draft_count(0.95, modelled, 15) == 4  # 4.52 tokens for 4.05 steps
    assert best_draft_count(0.99, modelled, 15) == 11
    assert best_draft_count(0.99, modelled, 10) == 7  # no more than the lookup found, in one of the sizes kept
    assert best_draft_count(0.99, modelled, 1) == 0
    assert best_draft_count(0.5, FREE, 15) == 15  # where rows are free, every guess pays

    costs = StepCosts()
    for _ in range(5):
        costs.record(0, 0.010)
        costs.record(4, 0.010 * (1 + 0.1 * (0.25 + 0.7 * 4)))  # measured: a tenth of the model
    costs.record(4, 1.0)  # one slow step (a graph built) changes nothing
    assert costs.scale() == pytest.approx(0.1)
    assert best_draft_count(0.9, costs.relative, 15) == 11  # cheap rows: long drafts pay where the model's did not


def test_acceptance_is_learned_from_guesses_not_drafted():
    """A guess that did not pay is still checked against the tokens that came: once the
    sequence is seen to follow its guesses, drafting starts."""
    lookup = PromptLookup(max_drafts=8, vocab_size=100)
    text = list(range(10, 40))
    tokens = text + [7] + text[:3]  # the text starts again
    assert lookup.acceptance == 0.5
    assert lookup.propose(tokens, 8) == []  # as likely as not: no draft pays; text[3:11] is guessed
    tokens += text[3:11]  # and is what the model writes
    assert lookup.propose(tokens, 8) == []  # 8 of 8 agreed: at 0.92, still no gain; text[11:19] is guessed
    assert lookup.acceptance == pytest.approx((0.8 * 1 + 8) / (0.8 * 2 + 8))
    tokens += text[11:19]
    assert lookup.propose(tokens, 8) == text[19:23]  # 16 of 16: at 0.96, four drafts pay
    lookup.update(3, 0)  # then the model disagrees at once: drafting stops
    assert lookup.propose(tokens, 8) == []


def test_only_greedy_sampling_drafts():
    assert drafting_allowed(GenerateOptions(sampler=GREEDY))
    assert drafting_allowed(GenerateOptions(sampler=SamplerOptions(temperature=0.7, top_k=1)))
    assert not drafting_allowed(GenerateOptions(sampler=SamplerOptions(temperature=0.7)))
    assert not drafting_allowed(GenerateOptions(sampler=GREEDY, draft_num_predict=0))


# -- numerics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b", "gemma3-270m"])
def test_verification_rows_equal_one_token_steps_bit_for_bit(name):
    """A batch of the next token and 8 more, computed rows_apart, gives each row the logits of
    decoding those tokens one at a time, exactly (here across a 64-cell boundary of n_kv)."""
    with StepEngine(real_model(name), num_ctx=256) as engine:
        together, one_at_a_time = rows_apart_and_one_at_a_time(engine, engine.tokenizer.encode("def add(a, b):\n    return a + b\n\n" * 8)[:58])
    assert np.array_equal(together, one_at_a_time)


# -- real generations ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coder():
    with ParallelEngine(real_model("qwen2.5-coder-0.5b"), num_ctx=1024) as engine:
        # Every guess is drafted, whatever the step times measured on a busy machine say:
        # these tests are about what a verification does, not when drafting pays.
        engine.step_costs.relative = FREE
        yield engine


@pytest.fixture(scope="module")
def code_edit(coder):
    """The code-edit prompt's plain greedy answer (to its end: EOS)."""
    prompt = coder.tokenizer.encode(CODE_EDIT)
    prime(coder, prompt)
    text, done = run(coder, prompt, num_predict=200, draft_num_predict=0)
    assert done.draft_count == 0 and done.done_reason == "stop"
    return prompt, text, done


@pytest.fixture(scope="module")
def drafted(coder, code_edit):
    """The code-edit prompt's answer with drafts, and its verification steps."""
    prompt, _, _ = code_edit
    with pytest.MonkeyPatch.context() as monkeypatch:
        steps = record_verifications(monkeypatch)
        text, done = run(coder, prompt, num_predict=200)
    return text, done, steps


def test_code_edit_with_drafts_is_plain_decoding_and_accepts_most(coder, code_edit, drafted):
    _, want_text, want = code_edit
    text, done, steps = drafted
    assert (text, done.tokens, done.done_reason, done.eval_count) == (want_text, want.tokens, "stop", want.eval_count)
    assert "result = [list(ordered[0])]" in text and "merged" not in text  # the edit was made
    assert done.draft_count == sum(n for _, n, _ in steps) > 0
    assert done.draft_accepted_count == sum(a for _, _, a in steps)
    assert done.draft_accepted_count >= 0.5 * done.draft_count, (done.draft_accepted_count, done.draft_count)
    # Tokens taken from drafts needed no step of their own: most of the answer.
    assert done.draft_accepted_count >= 0.5 * done.eval_count
    assert_cache_holds_exactly(coder)


def test_num_predict_and_stop_string_in_an_accepted_run_stop_where_plain_decoding_does(coder, code_edit, drafted,
                                                                                      monkeypatch):
    prompt, plain_text, plain = code_edit
    generated = plain.tokens[len(prompt):]
    # A verification whose drafts the model agreed with for 3 tokens or more, early on.
    before, _, agreed = next(step for step in drafted[2] if step[2] >= 3 and step[0] >= 4)

    # num_predict ends the generation two tokens into that run of agreement.
    limit = before + 2
    text, done = run(coder, prompt, num_predict=limit)
    assert done.tokens == prompt + generated[:limit] and done.done_reason == "length" and done.eval_count == limit
    assert plain_text.startswith(text)
    assert_cache_holds_exactly(coder)

    # A stop string that is the text of the run's second token (where it first occurs).
    pieces = [coder.tokenizer.decode(generated[:i]) for i in range(before + 3)]
    stop = pieces[before + 2][len(pieces[before + 1]):].strip()
    assert stop
    want_text, want = run(coder, prompt, num_predict=200, stop=[stop], draft_num_predict=0)
    steps = record_verifications(monkeypatch)
    text, done = run(coder, prompt, num_predict=200, stop=[stop])
    assert (text, done.tokens, done.done_reason, done.eval_count) == (want_text, want.tokens, "stop", want.eval_count)
    assert done.draft_accepted_count > 0 and steps[-1][1] > steps[-1][2]  # it stopped before the drafts ran out
    assert_cache_holds_exactly(coder)


def test_eos_drafted_from_the_prompt_ends_the_answer_as_plain_decoding_does(code_edit, drafted):
    """The answer ends with the fence and <|im_end|>, which the prompt's own fence is followed
    by: the lookup drafts EOS, and the generation ends on it, in the middle of a verification."""
    _, want_text, want = code_edit
    text, done, steps = drafted
    assert (text, done.tokens, done.done_reason) == (want_text, want.tokens, "stop")
    before, drafts, _ = steps[-1]
    assert before + 1 <= done.eval_count <= before + drafts  # the EOS came from one of its rows


def test_cancel_in_an_accepted_run_leaves_a_prefix_and_a_consistent_cache(coder, code_edit):
    prompt, plain_text, _ = code_edit
    job = coder.submit(prompt, GenerateOptions(num_predict=200, sampler=GREEDY))
    received = []
    for event in job:
        received.append(event)
        if len(received) == 20:
            job.cancel()
    assert not any(isinstance(e, Done) for e in received)
    text = "".join(e.text for e in received)
    assert plain_text.startswith(text) and len(text) < len(plain_text)
    # The engine frees the slot on its next step; then nothing of the drafts is left.
    prime(coder, prompt)
    assert_cache_holds_exactly(coder)


@pytest.mark.parametrize("name, prompts", [
    ("smollm2", [RAG, chatml("Repeat this list exactly: apples, pears, plums, figs, dates, limes, kiwis."),
                 chatml("Write a haiku about the sea.")]),
    ("gemma3-270m", ["The quick brown fox jumps over the lazy dog. The quick brown fox",
                     "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                     "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"]),
])
def test_prompts_give_the_same_tokens_with_and_without_drafts(name, prompts):
    """Drafts made free, so every guess is evaluated: most are rejected on these prompts, and
    each rejection must leave plain decoding's tokens and cache."""
    with ParallelEngine(real_model(name), num_ctx=512) as engine:
        engine.step_costs.relative = FREE
        drafted = 0
        for prompt in prompts:
            ids = engine.tokenizer.encode(prompt)
            prime(engine, ids)
            plain_text, plain = run(engine, ids, num_predict=40, draft_num_predict=0)
            text, done = run(engine, ids, num_predict=40)
            assert (text, done.tokens, done.done_reason) == (plain_text, plain.tokens, plain.done_reason), prompt
            drafted += done.draft_count
            assert_cache_holds_exactly(engine)
    assert drafted > 0


def test_a_greedy_slot_drafts_only_while_it_decodes_alone(monkeypatch):
    """Beside another decoding slot a step is already shared, and drafts would make every row
    of it computed apart: the greedy slot drafts once the sampling one has finished."""
    busy_while_verifying = []
    verify = ParallelEngine._verify

    def recording(self, slot, rows, drafts):
        busy_while_verifying.append(sum(s.job is not None for s in self._slots))
        verify(self, slot, rows, drafts)

    monkeypatch.setattr(ParallelEngine, "_verify", recording)
    sampled = SamplerOptions(temperature=0.8, seed=7)
    with ParallelEngine(real_model("smollm2"), num_parallel=2, num_ctx=512) as engine:
        engine.step_costs.relative = FREE  # every guess pays: only being alone decides
        rag, haiku = engine.tokenizer.encode(RAG), engine.tokenizer.encode("A haiku about the sea:\n")
        jobs = [engine.submit(rag, GenerateOptions(num_predict=64, sampler=GREEDY)),
                engine.submit(haiku, GenerateOptions(num_predict=12, sampler=sampled))]
        rag_done, haiku_done = [list(job)[-1] for job in jobs]
        assert_cache_holds_exactly(engine)
    assert haiku_done.draft_count == 0 and haiku_done.eval_count == 12
    assert rag_done.draft_count > 0 and busy_while_verifying and set(busy_while_verifying) == {1}


def test_logprobs_and_json_format_stay_exact_while_drafting(coder, code_edit):
    """Every verified row is sampled by Generation.step in order: logprobs report the very
    distributions of plain decoding, and a JSON schema constrains the drafts' rows too."""
    from pollama.sample.constraint import make_constraint

    prompt, _, _ = code_edit
    prime(coder, prompt)
    plain = list(coder.submit(prompt, GenerateOptions(num_predict=24, sampler=GREEDY, logprobs=True, top_logprobs=2,
                                                      draft_num_predict=0)))
    drafting = list(coder.submit(prompt, GenerateOptions(num_predict=24, sampler=GREEDY, logprobs=True, top_logprobs=2)))
    assert drafting[-1].draft_accepted_count > 0
    assert [e.logprobs for e in drafting[:-1]] == [e.logprobs for e in plain[:-1]]

    schema = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}
    asked = coder.tokenizer.encode(chatml(f"Put this function in the `code` field of a JSON object:\n\n{FUNCTION}"))
    prime(coder, asked)
    outputs = []
    for draft_num_predict in (0, 10):
        options = GenerateOptions(num_predict=40, sampler=GREEDY, draft_num_predict=draft_num_predict,
                                  constraint=make_constraint(coder.tokenizer, schema))
        outputs.append(list(coder.submit(asked, options))[-1])
    assert outputs[0].tokens == outputs[1].tokens
    assert_cache_holds_exactly(coder)
