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
(Batch.rows_apart). Drafting is only turned on where it pays: greedy sampling, where the
model agrees with a good guess every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pollama.runner.generation import GenerateOptions

# The most tokens drafted a step (Ollama's `draft_num_predict` option): a step of at most
# 16 rows keeps its compute graph for reuse (engine.MAX_DECODE_BATCH).
DEFAULT_DRAFT_NUM_PREDICT = 10
MAX_DRAFT_NUM_PREDICT = 15
# The n-grams looked up, longest first: a 1-gram matches too often to guess well.
MAX_NGRAM = 3
MIN_NGRAM = 2
# After a guess the model rejects, the next drafts are this long at least: a short run of
# agreement often resumes (the next line of a copied function).
MIN_DRAFTS_AFTER_MISS = 2


def drafting_allowed(options: GenerateOptions) -> bool:
    """Whether a generation drafts: asked for (draft_num_predict > 0) and greedy sampling.

    Any sampler would stay exact (each row is sampled in order), but a random draw agrees
    with a guess too rarely for the extra rows to pay.
    """
    sampler = options.sampler
    return options.draft_num_predict > 0 and (sampler.temperature <= 0 or sampler.top_k == 1)


class PromptLookup:
    """Drafts for one sequence: what followed the latest earlier occurrence of its last n tokens."""

    def __init__(self, max_drafts: int, vocab_size: int):
        self.max_drafts = max(0, min(int(max_drafts), MAX_DRAFT_NUM_PREDICT))
        self.limit = self.max_drafts  # adapts: shrinks after a miss, grows after full agreement
        self.vocab_size = vocab_size
        # For each n: n-gram -> the index of the token that followed its latest occurrence.
        self._follower: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(MIN_NGRAM, MAX_NGRAM + 1)}
        self._indexed = 0  # tokens of the sequence indexed so far

    def propose(self, tokens: Sequence[int], most: int) -> list[int]:
        """Up to `most` (and the adaptive limit) draft tokens to follow `tokens`, the whole
        sequence so far (prompt + generated); [] when its end was not seen before."""
        self._index(tokens)
        most = min(most, self.limit)
        if most <= 0:
            return []
        end = len(tokens)
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if end < n:
                continue
            start = self._follower[n].get(tuple(tokens[end - n:end]))
            if start is None:
                continue
            drafts = []
            for token in tokens[start:start + most]:
                if not 0 <= token < self.vocab_size:  # an image's placeholder: no text to guess
                    break
                drafts.append(int(token))
            if drafts:
                return drafts
        return []

    def update(self, proposed: int, accepted: int) -> None:
        """Adapt the draft length to how many of the last drafts the model agreed with."""
        if accepted >= proposed:
            self.limit = min(self.max_drafts, max(self.limit, proposed) * 2)
        else:
            self.limit = max(MIN_DRAFTS_AFTER_MISS, accepted + 1)

    def _index(self, tokens: Sequence[int]) -> None:
        # The sequence only grows within a generation: index the n-grams that got a follower
        # since the last call (an n-gram at the very end has none yet, so a lookup of the
        # sequence's own end finds an earlier occurrence only).
        for i in range(max(self._indexed, 1), len(tokens)):
            for n, follower in self._follower.items():
                if i >= n:
                    follower[tuple(tokens[i - n:i])] = i
        self._indexed = len(tokens)
