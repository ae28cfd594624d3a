import numpy as np
import pytest

from pollama.sample import Sampler, SamplerOptions, apply_penalties

NO_PENALTY = dict(repeat=1.0, frequency=0.0, presence=0.0)


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0], np.float32)
    out = apply_penalties(logits, [0, 1, 3, 1], last_n=64, repeat=2.0)
    # 0: positive -> 2/2; 1: negative -> -1*2 (once, though seen twice); 3: zero stays zero;
    # 2 and 4 were never seen.
    np.testing.assert_array_equal(out, [1.0, -2.0, 0.5, 0.0, 3.0])
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 0.0, 3.0])  # input untouched


def test_repeat_last_n_window():
    logits = np.array([1.0, 1.0, 1.0], np.float32)
    history = [0, 1, 2, 2]
    # Only the last two ids (2, 2) count.
    np.testing.assert_array_equal(apply_penalties(logits, history, last_n=2, repeat=2.0), [1.0, 1.0, 0.5])
    # -1 = the whole history.
    np.testing.assert_array_equal(apply_penalties(logits, history, last_n=-1, repeat=2.0), [0.5, 0.5, 0.5])
    # 0 = disabled.
    np.testing.assert_array_equal(apply_penalties(logits, history, last_n=0, repeat=2.0), [1.0, 1.0, 1.0])


def test_frequency_and_presence_penalties():
    logits = np.array([1.0, 0.0, 0.5], np.float32)
    out = apply_penalties(logits, [0, 0, 0, 2], last_n=64, repeat=1.0, frequency=0.1, presence=0.2)
    # token 0: seen 3 times -> 1 - 3*0.1 - 0.2; token 2: once -> 0.5 - 0.1 - 0.2.
    np.testing.assert_allclose(out, [0.5, 0.0, 0.2], rtol=0, atol=1e-6)


def test_repeat_then_frequency_order():
    # llama.cpp scales by the repeat penalty first, then subtracts: (1/2) - 3*0.1 = 0.2.
    out = apply_penalties(np.array([1.0, 0.0], np.float32), [0, 0, 0], last_n=64, repeat=2.0, frequency=0.1)
    np.testing.assert_allclose(out, [0.2, 0.0], atol=1e-6)


def test_neutral_penalties_and_out_of_vocab_ids_leave_logits_alone():
    logits = np.array([1.0, -1.0], np.float32)
    assert apply_penalties(logits, [0, 1], **NO_PENALTY) is logits
    assert apply_penalties(logits, [], repeat=2.0) is logits
    # Ids beyond the vocabulary (e.g. image placeholders) or negative are ignored.
    np.testing.assert_array_equal(apply_penalties(logits, [5, -3, 1], repeat=2.0), [1.0, -2.0])


def test_out_buffer_is_reused_and_huge_values_do_not_overflow():
    logits = np.array([3.0, -3.0e38, 1.0], np.float32)
    buf = np.empty(3, np.float32)
    out = apply_penalties(logits, [1], repeat=2.0, out=buf)
    # -6e38 does not fit float32: the result must switch to float64, not become -inf.
    assert out.dtype == np.float64 and out[1] == pytest.approx(-6.0e38, rel=1e-6)
    out = apply_penalties(logits, [0], repeat=2.0, out=buf)
    assert out is buf and out[0] == 1.5


def test_greedy_sees_the_penalty():
    # Penalties come before the argmax (llama.cpp's order), so they change greedy output.
    opts = SamplerOptions(temperature=0, repeat_penalty=1.1)
    s = Sampler(opts, 2)
    assert s.sample(np.array([2.0, 1.9], np.float32), []) == 0
    assert s.sample(np.array([2.0, 1.9], np.float32), [0]) == 1  # 2/1.1 = 1.82 < 1.9
    assert s.sample(np.array([-1.0, -1.05], np.float32), [0]) == 1  # -1*1.1 = -1.1 < -1.05
    s = Sampler(SamplerOptions(temperature=0, repeat_penalty=1.0, presence_penalty=0.5), 2)
    assert s.sample(np.array([2.0, 1.9], np.float32), [0]) == 1


def test_greedy_with_penalties_leaves_the_logits_and_breaks_ties_as_a_penalized_copy():
    # The greedy path writes the penalized values in place and puts the originals back.
    rng = np.random.default_rng(5)
    opts = SamplerOptions(temperature=0, repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1)
    s = Sampler(opts, 1000)
    for _ in range(50):
        logits = rng.integers(-3, 4, 1000).astype(np.float32)  # many exact ties
        history = list(rng.integers(0, 1000, 80))
        before = logits.copy()
        want = int(np.argmax(apply_penalties(before, history, last_n=opts.repeat_last_n, repeat=1.3,
                                             frequency=0.2, presence=0.1)))
        assert s.sample(logits, history) == want
        np.testing.assert_array_equal(logits, before)
    read_only = before.copy()
    read_only.flags.writeable = False  # e.g. a view of the engine's buffer: the copying path
    assert s.sample(read_only, history) == want


def test_penalty_moves_mass_in_random_sampling():
    opts = SamplerOptions(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0, frequency_penalty=1.0, seed=3)
    s = Sampler(opts, 2)
    logits = np.zeros(2, np.float32)
    draws = [s.sample(logits, [0, 0, 0]) for _ in range(2000)]
    # token 0 loses 3 logits: p0 = 1/(1+e^3) = 0.047.
    assert abs(draws.count(0) / 2000 - 0.047) < 0.02
