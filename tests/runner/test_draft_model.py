"""Speculative decoding with a draft model: whatever the draft model proposes, the output is
token for token that of plain decoding, and both models' caches hold exactly their sequences.

The models are tiny random llamas sharing a byte-level vocabulary (tests/tinyllama.py): the
target; a copy of it as the draft (it proposes the target's own greedy tokens: with no repeat
penalty, every one is accepted); the target with noise on its weights (it agrees often, not
always: accepted runs and rejections); and an unrelated model (it almost never agrees).
"""

from __future__ import annotations

import shutil

import pytest
from tinyllama import VOCAB, tiny_llama

from pollama.runner.draft import ModelDrafter
from pollama.runner.generation import Done, GenerateOptions
from pollama.runner.parallel import ParallelEngine
from pollama.runner.speculative import StepCosts
from pollama.sample import SamplerOptions

GREEDY = SamplerOptions(temperature=0.0)  # Ollama's default repeat_penalty (1.1) stays on: it must not matter
UNPENALIZED = SamplerOptions(temperature=0.0, repeat_penalty=1.0)  # the draft model's own argmax
PROMPTS = ["Hello world, this is a test.", "def f(x):\n    return x * 2\n", "1, 2, 3, 4, 5,"]


def FREE(drafts: int) -> float:
    return 1.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("draft")
    target = tiny_llama(folder / "target.gguf")
    shutil.copy(target, folder / "copy.gguf")
    return {"target": target, "copy": folder / "copy.gguf",
            "noisy": tiny_llama(folder / "noisy.gguf", noise=0.05),
            "other": tiny_llama(folder / "other.gguf", seed=7, n_layers=1)}


def open_engine(models, draft: str, **kwargs) -> ParallelEngine:
    engine = ParallelEngine(models["target"], draft=models[draft], **{"num_ctx": 256, **kwargs})
    # Every draft is evaluated, whatever the measured step times say (POLLAMA_DRAFT_IGNORE_COST):
    # these tests are about what drafting and verifying do, not when they pay (test_draft_length_... is).
    engine.step_costs = StepCosts(free=True)
    return engine


def generate(engine: ParallelEngine, prompt: list[int], **options) -> Done:
    events = list(engine.submit(prompt, GenerateOptions(**{"sampler": GREEDY, **options})))
    assert isinstance(events[-1], Done)
    return events[-1]


def assert_caches_hold_exactly(engine: ParallelEngine) -> None:
    """Each slot's cache, and the draft model's, hold the K/V of their items and nothing else
    (the draft model's last guesses stay until it next proposes: it drops them then)."""
    for slot in engine._slots:
        assert engine.engine.cache.used(slot.seq) == len(slot.cached)
        assert engine.draft.engine.cache.used(slot.seq) == len(engine.draft.cached[slot.seq])


@pytest.mark.parametrize("draft", ["copy", "noisy", "other"])
def test_draft_model_output_is_plain_decoding(models, draft):
    with open_engine(models, draft) as engine:
        counts = []
        for sampler in (GREEDY, UNPENALIZED):
            for text in PROMPTS:
                prompt = engine.tokenizer.encode(text)
                plain = generate(engine, prompt, sampler=sampler, num_predict=60, draft_num_predict=0)
                engine.forget()  # both from an empty cache: the prompt evaluated alike
                drafted = generate(engine, prompt, sampler=sampler, num_predict=60)
                assert (drafted.tokens, drafted.done_reason, drafted.eval_count) == \
                    (plain.tokens, plain.done_reason, plain.eval_count), (draft, text)
                assert plain.draft_count == 0 and drafted.draft_count > 0
                counts.append((sampler is UNPENALIZED, drafted.draft_accepted_count, drafted.draft_count))
                assert_caches_hold_exactly(engine)
                engine.forget()
    accepted = sum(a for _, a, _ in counts)
    proposed = sum(n for _, _, n in counts)
    if draft == "copy":
        # The target itself, without a penalty it does not know: every draft is the target's token.
        assert all(a == n for unpenalized, a, n in counts if unpenalized)
        assert accepted > 0.25 * proposed, counts  # measured 286 of 415 (the penalty's tokens differ)
    elif draft == "noisy":
        assert 0.1 * proposed < accepted < 0.5 * proposed, counts  # measured 205 of 951
    else:
        assert accepted < 0.02 * proposed, counts  # measured 0 of 420


def test_cached_prompt_next_turn_and_context_shift_keep_the_draft_in_step(models):
    """The draft model's cache follows the sequence: a next turn reuses a cached prefix, and a
    full context shifts the target's cache (the draft model re-reads what moved)."""
    with open_engine(models, "noisy", num_ctx=64) as engine:
        prompt = engine.tokenizer.encode(PROMPTS[1])
        plain = generate(engine, prompt, num_predict=150, draft_num_predict=0)  # shifts at 64
        engine.forget()
        drafted = generate(engine, prompt, num_predict=150)
        assert drafted.tokens == plain.tokens and drafted.draft_accepted_count > 0
        assert drafted.eval_count == 150 > 64  # the context was shifted (twice)
        assert_caches_hold_exactly(engine)
        follow_up = drafted.tokens[:40] + engine.tokenizer.encode(" and again")
        plain = generate(engine, follow_up, num_predict=20, draft_num_predict=0)
        again = generate(engine, follow_up, num_predict=20)
        assert again.tokens == plain.tokens and again.prompt_cached > 0
        assert_caches_hold_exactly(engine)


def test_draft_model_with_another_tokenizer_is_refused(tmp_path, models):
    other = tiny_llama(tmp_path / "other-vocab.gguf", vocab=VOCAB[:100] + ["xx"] + VOCAB[101:])
    with pytest.raises(ValueError, match=r"the draft model's tokenizer is not the model's \(token 100 is 'xx'"):
        ParallelEngine(models["target"], draft=other, num_ctx=64)


def test_draft_length_counts_the_draft_models_steps(models):
    """A step of k drafts costs the verification (StepCosts) plus k draft-model passes: drafts
    that are free to verify still do not pay when each costs a plain step to make."""
    with open_engine(models, "copy") as engine:
        prompt = engine.tokenizer.encode(PROMPTS[0])
        drafter = ModelDrafter(engine.draft, 0, 15, StepCosts())
        assert drafter.acceptance == pytest.approx(0.9)
        engine.draft.relative_step = lambda costs: 1.0
        assert drafter.propose(prompt, 15, FREE) == []  # 1 + k steps for at most k + 1 tokens
        engine.draft.relative_step = lambda costs: 0.0
        drafts = drafter.propose(prompt, 15, FREE)
        assert len(drafts) == 15 and engine.draft.cached[0] == prompt + drafts[:-1]
        assert drafter.propose(prompt, 6, FREE) == drafts[:4]  # the sizes kept (2, 4, 7, 11, 15), within `most`
        assert engine.draft.cached[0] == prompt + drafts[:3]  # rolled back to what was shared, then on
        # Until measured, a draft-model pass costs its share of the weights (here a copy: 1).
        assert type(engine.draft).relative_step(engine.draft, StepCosts()) == pytest.approx(1.0)


def test_quantized_real_model_drafting_for_itself():
    """SmolLM2 Q4_1 as its own draft model: the drafts are its greedy tokens, though the draft
    model reads them in batches (other kernels, other rounding) where the verification computes
    one-token rows; the output is plain decoding's."""
    from realmodels import real_model

    path = real_model("smollm2")
    with ParallelEngine(path, draft=path, num_ctx=512) as engine:
        engine.step_costs = StepCosts(free=True)
        prompt = engine.tokenizer.encode("<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n"
                                         "<|im_start|>assistant\n")
        plain = generate(engine, prompt, sampler=UNPENALIZED, num_predict=60, draft_num_predict=0)
        engine.forget()
        drafted = generate(engine, prompt, sampler=UNPENALIZED, num_predict=60)
        assert drafted.tokens == plain.tokens
        # Measured: 51 of 51 accepted (a near tie rounded the other way would reject one).
        assert drafted.draft_accepted_count >= 0.9 * drafted.draft_count > 0
        assert_caches_hold_exactly(engine)
