"""Each step on its own, on candidate sets where the right answer is known by hand."""

import numpy as np
import pytest

from pollama.sample import transforms as T


def _probs(*p):
    return np.arange(len(p)), np.array(p, np.float32)


def _kept(result):
    return sorted(int(i) for i in result[0])


def test_top_k_keeps_the_k_largest_sorted():
    ids, logits = np.arange(6), np.array([0.1, 5.0, -2.0, 3.0, 4.0, 0.0], np.float32)
    kid, kv = T.top_k(ids, logits, 3)
    assert list(kid) == [1, 4, 3] and list(kv) == [5.0, 4.0, 3.0]
    assert T.top_k(ids, logits, 0)[0] is ids  # off
    assert T.top_k(ids, logits, 6)[0] is ids  # >= vocab: off


def test_softmax_and_temperature():
    ids, probs = T.softmax(np.arange(3), np.array([2.0, 1.0, 0.0], np.float32), temperature=0.5)
    e = np.exp([4.0, 2.0, 0.0])
    np.testing.assert_allclose(probs, e / e.sum(), rtol=1e-6)


def test_softmax_extremes():
    # Huge logits and a tiny temperature must not produce NaN.
    _, p = T.softmax(np.arange(3), np.array([3e38, -3e38, 2e38], np.float32), temperature=1e-9)
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.0])
    # +inf logits split the mass evenly among themselves.
    _, p = T.softmax(np.arange(3), np.array([np.inf, 1.0, np.inf], np.float32))
    np.testing.assert_array_equal(p, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="-inf"):
        T.softmax(np.arange(2), np.array([-np.inf, -np.inf], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        T.softmax(np.arange(2), np.array([1.0, np.nan], np.float32))


@pytest.mark.parametrize(
    "p, kept",
    [
        (0.0, [0]),  # the first token already exceeds 0
        (0.35, [0]),
        (0.6, [0, 1]),  # 0.4 <= 0.6 < 0.7: the crossing token (1) is kept
        (0.75, [0, 1, 2]),
        (0.95, [0, 1, 2, 3]),
        (1.0, [0, 1, 2, 3]),  # off
    ],
)
def test_top_p(p, kept):
    # Shuffled, so that the step cannot rely on sorted input.
    ids, probs = np.array([2, 0, 3, 1]), np.array([0.2, 0.4, 0.1, 0.3], np.float32)
    assert _kept(T.top_p(ids, probs, p)) == kept


def test_top_p_grows_its_head_past_the_first_guess():
    # 10 000 equal tokens: 0.5 of the mass needs 5001 of them, far more than the first head.
    n = 10_000
    ids, probs = np.arange(n), np.full(n, 1.0 / n, np.float32)
    assert T.top_p(ids, probs, 0.5)[0].size == 5001
    # A peaked distribution with a long flat tail: the head holds the crossing token.
    probs = np.full(n, 0.5 / (n - 1), np.float32)
    probs[1234] = 0.5
    kept = T.top_p(ids, probs, 0.5)[0]
    assert kept[0] == 1234 and kept.size == 2


@pytest.mark.parametrize("p, kept", [(0.0, [0, 1, 2, 3]), (0.25, [0, 1, 2]), (0.35, [0, 1]), (1.0, [0])])
def test_min_p(p, kept):
    # threshold = 0.5 * p: 0.125 keeps 0.15, 0.175 drops it.
    assert _kept(T.min_p(*_probs(0.5, 0.25, 0.15, 0.1), p)) == kept


@pytest.mark.parametrize("p, kept", [(0.25, [1]), (0.5, [0, 1]), (0.9, [0, 1, 2]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_typical_p_hand_computed(p, kept):
    # probs 0.5, 0.3, 0.15, 0.05: entropy H = 1.1421 nats; surprise -ln p = 0.693, 1.204,
    # 1.897, 2.996; |surprise - H| = 0.449, 0.062, 0.755, 1.854. Most typical first:
    # token 1 (0.3), 0 (cum 0.8), 2 (cum 0.95), 3 (cum 1.0). So 0.25 keeps only token 1,
    # dropping the most probable token.
    assert _kept(T.typical_p(*_probs(0.5, 0.3, 0.15, 0.05), p)) == kept


def test_typical_p_ignores_zero_probabilities():
    assert _kept(T.typical_p(*_probs(0.5, 0.3, 0.0, 0.15, 0.05), 0.5)) == [0, 1]


def test_draw_follows_the_weights_and_never_picks_zero_mass():
    rng = np.random.default_rng(0)
    ids = np.array([10, 11, 12, 13])
    probs = np.array([0.0, 0.75, 0.0, 0.25], np.float32)
    draws = [T.draw(ids, probs, rng) for _ in range(4000)]
    assert set(draws) == {11, 13}
    assert abs(draws.count(11) / 4000 - 0.75) < 0.03


def test_draw_across_blocks():
    # Mass in a few tokens spread over several 1024-wide blocks, including the ragged tail.
    n = 5000
    probs = np.zeros(n, np.float32)
    where = [0, 1023, 1024, 3000, 4999]
    probs[where] = [0.1, 0.2, 0.3, 0.15, 0.25]
    rng = np.random.default_rng(1)
    draws = np.array([T.draw(np.arange(n), probs, rng) for _ in range(20_000)])
    assert set(draws.tolist()) == set(where)
    freq = np.array([(draws == w).mean() for w in where])
    assert np.abs(freq - probs[where]).max() < 0.015


class _EdgeRng:
    """A generator that returns the largest double below 1, to hit the CDF's rounding edge."""

    def random(self):
        return np.nextafter(1.0, 0.0)


def test_draw_at_the_top_of_the_cdf_picks_a_weighted_token():
    ids = np.arange(3)
    assert T.draw(ids, np.array([0.3, 0.7, 0.0], np.float32), _EdgeRng()) == 1
