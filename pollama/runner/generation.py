"""One sequence's generation: logits in, text pieces out, until EOS, a stop string or a limit.

The forward passes are ParallelEngine's (the one decode loop, one batch for all its
sequences): this only samples, decodes, filters stop strings and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pollama.models.multimodal import token_ids
from pollama.runner.speculative import DEFAULT_DRAFT_NUM_PREDICT
from pollama.runner.stop import StopBuffer
from pollama.sample import Sampler, SamplerOptions
from pollama.sample.logprobs import logprobs as log_softmax_of
from pollama.tokenizer.tokenizer import Tokenizer


@dataclass
class GenerateOptions:
    """What one generation may do (Ollama's option names)."""

    num_predict: int = -1  # -1: until EOS (or the context is full, without shift)
    stop: Sequence[str] = ()
    sampler: SamplerOptions = field(default_factory=lambda: SamplerOptions(temperature=0.0))
    logprobs: bool = False  # report each sampled token's log-probability
    top_logprobs: int = 0  # and the best n alternatives (Ollama allows 0..20)
    # Structured output: an object with mask() -> bool[vocab] of the tokens allowed next,
    # accept(token) and `done` (see pollama/sample/constraint.py). With `constrain_after`
    # (a thinking block's closing tag) it applies only once that text was generated.
    constraint: Any = None
    constrain_after: str | None = None
    # Speculative decoding (ParallelEngine, greedy sampling): the most tokens drafted by prompt
    # lookup a step, 0 for none (Ollama's option of this name drafts with a second model).
    draft_num_predict: int = DEFAULT_DRAFT_NUM_PREDICT
    # A full context: shift it (drop old tokens after the first num_keep, see window.py) and
    # go on, as Ollama does unless told not to; else end with done_reason "length".
    shift: bool = True
    num_keep: int = 4


@dataclass
class Done:
    """The final event of a generation, with Ollama's counts; durations in nanoseconds."""

    done_reason: str  # "stop" (EOS or stop string) or "length"
    prompt_eval_count: int  # the whole prompt, cached or not, as current Ollama counts it
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    tokens: list[int]  # every token now in context: prompt + generated (Ollama's `context`)
    # Speculative decoding: draft tokens evaluated, and how many of them the model agreed with
    # (each one a token generated without a step of its own).
    draft_count: int = 0
    draft_accepted_count: int = 0
    prompt_cached: int = 0  # of the prompt's tokens, those whose K/V the cache held already


@dataclass
class Piece:
    """Text for the caller, with the token that completed it.

    `logprobs` (when asked for) covers every token sampled since the previous piece, in
    Ollama's wire form: {"token", "logprob", "bytes", "top_logprobs": [...]}.
    """

    text: str
    token: int
    logprobs: list[dict] | None = None


class Generation:
    """The sampling side of one sequence; feed it each step's logits with step()."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, prompt: Sequence[int], options: GenerateOptions):
        self.tokenizer = tokenizer
        self.options = options
        self.sampler = Sampler(options.sampler, vocab_size)
        self.stops = StopBuffer(list(options.stop))
        self.decoder = tokenizer.decoder()
        self.history = token_ids(prompt)  # prompt + generated ids (penalties look at both)
        self.generated = 0
        self.done_reason = "length"
        self.finished = False
        self._logprobs: list[dict] = []  # sampled but not yet attached to a piece
        self.constraint = options.constraint
        self._constrained = options.constraint is not None and not options.constrain_after
        self._tail = ""  # the end of the generated text, to spot constrain_after

    @property
    def last_token(self) -> int:
        """The token to evaluate next (the one just sampled)."""
        return self.history[-1]

    def step(self, logits: np.ndarray) -> list[Piece]:
        """Sample from one position's logits; the pieces of text this completes.

        After it, `finished` says whether the sequence is over (and `done_reason` why).
        """
        if self.finished:
            raise RuntimeError("step() after the generation finished")
        allowed = logits
        if self._constrained:
            allowed = np.where(self.constraint.mask(), logits, np.float32(-np.inf)).astype(np.float32)
        token = self.sampler.sample(allowed, self.history)
        self.generated += 1
        if self.options.logprobs:  # the model's own distribution, as Ollama reports it
            self._logprobs.append(self._logprob_entry(logits, token))
        if self._constrained:
            self.constraint.accept(token)
        if token in self.tokenizer.eog_ids:
            self.done_reason = "stop"
            return self.finish()
        self.history.append(token)
        decoded = self.decoder.feed(token)
        self._watch_for_constraint_start(decoded)
        text, stopped = self.stops.push(decoded)
        pieces = self._piece(text, token)
        if self._constrained and self.constraint.done:
            return pieces + self.finish("stop")  # the structure is complete
        if stopped:
            self.done_reason = "stop"
            self.finished = True
            return pieces + self._piece("", token, force=True)
        if self.generated == self.options.num_predict:
            return pieces + self.finish()
        return pieces

    def _watch_for_constraint_start(self, text: str) -> None:
        marker = self.options.constrain_after
        if self.constraint is None or self._constrained or not marker:
            return
        self._tail = (self._tail + text)[-(len(marker) + len(text)):]
        if marker in self._tail:
            self._constrained = True

    def finish(self, reason: str | None = None) -> list[Piece]:
        """End the generation here (EOS, a limit, a full context): release held-back text."""
        if reason is not None:
            self.done_reason = reason
        self.finished = True
        # What was held back: partial UTF-8, and text that looked like a stop string's start.
        text, stopped = self.stops.push(self.decoder.flush())
        if stopped:
            self.done_reason = "stop"
        text += self.stops.flush()
        return self._piece(text, self.history[-1], force=True)

    def _piece(self, text: str, token: int, force: bool = False) -> list[Piece]:
        """A piece for `text`, carrying the pending logprobs; at the end (`force`) also an
        empty piece if logprobs would otherwise be lost."""
        if not text and not (force and self._logprobs):
            return []
        pending, self._logprobs = self._logprobs, []
        return [Piece(text, token, pending if self.options.logprobs else None)]

    def _logprob_entry(self, logits: np.ndarray, token: int) -> dict:
        own, top = log_softmax_of(logits, token, self.options.top_logprobs)

        def entry(token_id: int, logprob: float) -> dict:
            raw = self.tokenizer.token_piece(token_id, special=True)
            return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

        return {**entry(token, own), "top_logprobs": [entry(i, lp) for i, lp in top]}
