"""Speculative decoding by prompt lookup: draft tokens copied from the sequence itself.

A model asked to edit code, quote its context or fill a template writes long runs it has
already seen. When the last few tokens of a sequence occurred before, the tokens that
followed them then are a guess at what follows now (llama.cpp's "lookup" decoding,
transformers' `prompt_lookup_num_tokens`). ParallelEngine evaluates the last token and the
guesses in one step, then samples the rows in order while the model agrees with them: every
agreeing guess is a token gained without a step of its own, and the first disagreement's
sample is the token plain decoding gives there. The output is the same token for token.

That rests on two things: each row is sampled by Generation.step in order, exactly as plain
decoding samples it (so penalties, stop strings, structured output and logprobs see the same
history), and the step computes each row's logits bit for bit as a one-token step would
(Batch.rows_apart). ggml's kernels for several rows sum in other orders than its one-row
kernels, and on these small quantized models that moves logits by 0.3 to 1.3, enough to flip
a greedy choice; so the rows are computed apart, and a step of k drafts costs about
1.25 + 0.7·k one-token steps on a 2-core CPU (which is compute-bound already at a few rows),
not the ~1 step it costs where decoding is memory-bound.

Drafting is therefore only done where it pays, judged step by step: greedy sampling (a
random draw agrees with a guess too rarely), one sequence decoding alone (beside others,
the step is already shared, and computing every row apart would slow them all), and a draft
length whose expected tokens (from the acceptance rate seen so far) outweigh the step's
measured cost. Guesses not evaluated are still checked against the tokens that came, so the
acceptance rate is known before drafting starts and after it stops.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pollama.runner.generation import GenerateOptions, Generation

# The most tokens drafted a step (Ollama's `draft_num_predict` option): a step of at most
# 16 rows keeps its compute graph for reuse (engine.MAX_DECODE_BATCH).
DEFAULT_DRAFT_NUM_PREDICT = 10
MAX_DRAFT_NUM_PREDICT = 15
# The n-grams looked up, longest first: a 1-gram matches too often to guess well.
MAX_NGRAM = 3
MIN_NGRAM = 2
# What is known of a sequence's agreement before any guess was checked: as likely as not,
# so nothing is drafted until the first guesses are seen to agree.
PRIOR_TRIED, PRIOR_AGREED = 2.0, 1.0
# Older checks count for less each time a guess is settled: the rate follows the text (a
# copied function, then free prose).
ACCEPTANCE_DECAY = 0.8
# A step with k drafts computed apart, in one-token steps, until measured: 1 + scale·(0.25 + 0.7·k),
# with scale 1 (measured on 2-core AMD EPYC and Xeon CPUs, Qwen2.5-Coder-0.5B and SmolLM2).
STEP_OVERHEAD, COST_PER_DRAFT = 0.25, 0.7
COST_SAMPLES = 9  # the scale is the median of the last few measured steps: a slow one is ignored
# The draft lengths a step may have: each is a compute graph of its own, kept for reuse
# (engine.MAX_GRAPHS), so a few sizes, not every length the lookup finds.
DRAFT_SIZES = (2, 4, 7, 11, 15)
# Draft only when the expected gain is at least this much: below it, noise in the estimates decides.
MIN_GAIN = 1.05


def drafting_allowed(options: GenerateOptions) -> bool:
    """Whether a generation may draft: asked for (draft_num_predict > 0) and greedy sampling.

    Any sampler would stay exact (each row is sampled in order), but a random draw agrees
    with a guess too rarely for the extra rows to pay.
    """
    sampler = options.sampler
    return options.draft_num_predict > 0 and (sampler.temperature <= 0 or sampler.top_k == 1)


def sample_drafts(generation: Generation, drafts: list[int], sample, cancelled) -> int:
    """Sample a verification step's rows in order while the model agrees with the drafts; how
    many it agreed with. `sample(i)` samples row i (the logits after the next token and
    drafts[:i]), False if the generation failed; it stops there, at the first disagreement,
    at the generation's end, or once `cancelled()`."""
    agreed = 0
    for i in range(len(drafts) + 1):
        before = len(generation.history)
        if not sample(i):
            break  # failed: the job is gone
        # An end-of-generation token is never in the history: it agrees with no draft.
        agrees = i < len(drafts) and len(generation.history) > before and generation.history[-1] == drafts[i]
        agreed += agrees
        if not agrees or generation.finished or cancelled():
            break
    return agreed


def draft_budget(num_ctx: int, cached: int, num_predict: int, generated: int) -> int:
    """The most drafts a step can use: row i of the step samples generated token number
    generated + i + 1, and is only reached while the cache (`cached` + i tokens after it)
    leaves room for another and num_predict (if positive) is not reached."""
    most = num_ctx - 2 - cached
    return min(most, num_predict - generated - 1) if num_predict > 0 else most


def expected_tokens(acceptance: float, drafts: int) -> float:
    """Tokens a step with `drafts` guesses yields when each is agreed with at `acceptance`
    (given the ones before it): its own token plus the run of agreeing guesses."""
    return sum(acceptance ** i for i in range(drafts + 1))


def best_draft_count(acceptance: float, step_cost, most: int) -> int:
    """The number of drafts (one of DRAFT_SIZES up to `most`, or 0) with the most tokens per
    unit of time, 0 unless it gains MIN_GAIN over a plain step; `step_cost(k)` is a step with
    k drafts in plain steps."""
    best, best_gain = 0, MIN_GAIN
    for k in (size for size in DRAFT_SIZES if size <= most):
        gain = expected_tokens(acceptance, k) / step_cost(k)
        if gain > best_gain:
            best, best_gain = k, gain
    return best


class StepCosts:
    """What a step with k drafts costs relative to a plain one-token step, measured on the
    engine's own steps (one sequence decoding alone, so the steps compare); `free`: as if
    drafts cost nothing (POLLAMA_DRAFT_IGNORE_COST)."""

    def __init__(self, free: bool = False):
        self.free = free
        self._plain: deque[float] = deque(maxlen=COST_SAMPLES)  # seconds of plain steps
        self._scales: deque[float] = deque(maxlen=COST_SAMPLES)  # measured / modelled extra cost

    def record(self, drafts: int, seconds: float) -> None:
        if drafts == 0:
            self._plain.append(seconds)
        elif self._plain:
            extra = seconds / statistics.median(self._plain) - 1.0
            self._scales.append(max(extra, 0.0) / (STEP_OVERHEAD + COST_PER_DRAFT * drafts))

    def plain_seconds(self) -> float | None:
        """A plain one-token step's time, once measured."""
        return statistics.median(self._plain) if self._plain else None

    def scale(self) -> float:
        return statistics.median(self._scales) if self._scales else 1.0

    def relative(self, drafts: int) -> float:
        """The cost of a step with `drafts` guesses, in plain steps."""
        if self.free:
            return 1.0
        return 1.0 + self.scale() * (STEP_OVERHEAD + COST_PER_DRAFT * drafts) if drafts else 1.0


class Drafter:
    """What a sequence's drafts have shown: the rate at which the model agrees with them.

    A drafter proposes with `propose(tokens, most, step_cost, cached)`: draft tokens to follow
    `tokens`, the whole sequence so far (prompt + generated, ending with the next token), at
    most `most`, as many as pay at `step_cost(k)` (a step with k drafts, in plain steps);
    `cached` is what the model's cache holds before that next token (less than tokens[:-1]
    after a context shift). It hears back with `update`.
    """

    def __init__(self, max_drafts: int, vocab_size: int):
        self.max_drafts = max(0, min(int(max_drafts), MAX_DRAFT_NUM_PREDICT))
        self.vocab_size = vocab_size
        self._tried, self._agreed = PRIOR_TRIED, PRIOR_AGREED  # decayed counts of checked guesses

    @property
    def acceptance(self) -> float:
        """The rate at which the model agreed with a guess, given it agreed with the ones before."""
        return self._agreed / self._tried

    def update(self, proposed: int, accepted: int) -> None:
        """Count a verification: the model agreed with the first `accepted` of `proposed` drafts."""
        self._observe(min(proposed, accepted + 1), accepted)

    def _observe(self, tried: int, agreed: int) -> None:
        self._tried = self._tried * ACCEPTANCE_DECAY + tried
        self._agreed = self._agreed * ACCEPTANCE_DECAY + agreed


class PromptLookup(Drafter):
    """Drafts for one sequence: what followed the latest earlier occurrence of its last n
    tokens, as many as pay at the rate the sequence has agreed with such guesses."""

    def __init__(self, max_drafts: int, vocab_size: int):
        super().__init__(max_drafts, vocab_size)
        # For each n: n-gram -> the index of the token that followed its latest occurrence.
        self._follower: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(MIN_NGRAM, MAX_NGRAM + 1)}
        self._indexed = 0  # tokens of the sequence indexed so far
        self._unevaluated: tuple[int, list[int]] | None = None  # (where, guess) not drafted, to check

    def propose(self, tokens: Sequence[int], most: int, step_cost=None, cached=None) -> list[int]:
        """Draft tokens to follow `tokens`, the whole sequence so far (prompt + generated): up
        to `most`, as many as pay at the cost `step_cost(k)` (plain steps; a fixed model when
        None); [] when its end was not seen before or no draft pays."""
        self._index(tokens)
        self._check_unevaluated(tokens)
        guess = self.lookup(tokens, min(most, self.max_drafts))
        if not guess:
            return []
        drafts = best_draft_count(self.acceptance, step_cost or StepCosts().relative, len(guess))
        if drafts == 0 and self._unevaluated is None:
            self._unevaluated = (len(tokens), guess)
        return guess[:drafts]

    def lookup(self, tokens: Sequence[int], most: int) -> list[int]:
        """Up to `most` tokens that followed the latest earlier occurrence of the sequence's end."""
        end = len(tokens)
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if end < n or most <= 0:
                continue
            start = self._follower[n].get(tuple(tokens[end - n:end]))
            if start is None:
                continue
            guess = []
            for token in tokens[start:start + most]:
                if not 0 <= token < self.vocab_size:  # an image's placeholder: no text to guess
                    break
                guess.append(int(token))
            if guess:
                return guess
        return []

    def _check_unevaluated(self, tokens: Sequence[int]) -> None:
        # A guess not drafted is settled once the tokens that came disagree with it or cover
        # it: the same count a verification of it would have given, for free.
        if self._unevaluated is None:
            return
        where, guess = self._unevaluated
        came = tokens[where:where + len(guess)]
        agreed = next((i for i, (a, b) in enumerate(zip(came, guess)) if a != b), len(came))
        if agreed < len(came) or len(came) == len(guess):
            self._observe(min(len(guess), agreed + 1), agreed)
            self._unevaluated = None

    def _index(self, tokens: Sequence[int]) -> None:
        # The sequence only grows within a generation: index the n-grams that got a follower
        # since the last call (an n-gram at the very end has none yet, so a lookup of the
        # sequence's own end finds an earlier occurrence only).
        for i in range(max(self._indexed, 1), len(tokens)):
            for n, follower in self._follower.items():
                if i >= n:
                    follower[tuple(tokens[i - n:i])] = i
        self._indexed = len(tokens)
