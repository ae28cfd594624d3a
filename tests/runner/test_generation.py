"""Generation on its own (no model): a constraint masks the sampler, ends the output when
complete, and waits for the end of a thinking block when asked to."""

from __future__ import annotations

import numpy as np
import pytest

from pollama.fs.gguf import GGUFFile
from pollama.runner.generation import GenerateOptions, Generation
from pollama.sample import SamplerOptions
from pollama.tokenizer import load_tokenizer
from realmodels import real_model


@pytest.fixture(scope="module")
def tokenizer():
    with GGUFFile(real_model("smollm2")) as gguf:
        return load_tokenizer(gguf.metadata)


class Sequence:
    """Allows exactly the given tokens in order, then is done."""

    def __init__(self, tokens, vocab):
        self.tokens, self.vocab, self.accepted = list(tokens), vocab, []

    def mask(self):
        allowed = np.zeros(self.vocab, dtype=bool)
        allowed[self.tokens[len(self.accepted)]] = True
        return allowed

    def accept(self, token):
        assert token == self.tokens[len(self.accepted)], "a token the mask forbade was sampled"
        self.accepted.append(token)

    @property
    def done(self):
        return len(self.accepted) == len(self.tokens)


def run(tokenizer, generation, favourite, steps=40):
    """Feed logits that always prefer `favourite`; the text produced."""
    logits = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    logits[favourite] = 10.0
    text = ""
    for _ in range(steps):
        text += "".join(p.text for p in generation.step(logits))
        if generation.finished:
            break
    return text


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constraint_masks_every_step_and_ends_the_output(tokenizer, temperature):
    wanted = tokenizer.encode('{"a": 1}', add_special=False)
    constraint = Sequence(wanted, tokenizer.vocab_size)
    options = GenerateOptions(sampler=SamplerOptions(temperature=temperature, seed=1), constraint=constraint, logprobs=True)
    generation = Generation(tokenizer, tokenizer.vocab_size, [1], options)
    text = run(tokenizer, generation, favourite=tokenizer.encode("x", add_special=False)[0])
    assert text == '{"a": 1}' and generation.done_reason == "stop" and constraint.done


def test_constraint_waits_for_the_end_of_thinking(tokenizer):
    think = tokenizer.encode("hmm</think>", add_special=False)
    answer = tokenizer.encode("ok", add_special=False)
    constraint = Sequence(answer, tokenizer.vocab_size)
    options = GenerateOptions(constraint=constraint, constrain_after="</think>")
    generation = Generation(tokenizer, tokenizer.vocab_size, [1], options)
    logits = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    text = ""
    for token in think:  # unconstrained: the model's own choice goes through
        logits[:] = 0
        logits[token] = 10.0
        text += "".join(p.text for p in generation.step(logits))
    assert text == "hmm</think>" and constraint.accepted == []
    text += run(tokenizer, generation, favourite=think[0])  # now only "ok" is allowed
    assert text == "hmm</think>ok" and constraint.done
