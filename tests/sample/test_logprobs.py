import math

import numpy as np
import pytest

from pollama.sample import logprobs


def test_logprob_of_token_and_top_n():
    logits = np.array([1.0, 3.0, 2.0, -np.inf], np.float32)
    log_z = math.log(math.e + math.e**3 + math.e**2)
    lp, top = logprobs(logits, 2, top_n=3)
    assert lp == pytest.approx(2.0 - log_z)
    assert [i for i, _ in top] == [1, 2, 0]
    assert [v for _, v in top] == pytest.approx([3.0 - log_z, 2.0 - log_z, 1.0 - log_z])
    assert logprobs(logits, 3)[0] == -math.inf
    assert logprobs(logits, 0, top_n=0)[1] == []
    assert len(logprobs(logits, 0, top_n=10)[1]) == 4


def test_logprobs_are_a_distribution_and_stable_for_huge_logits():
    logits = np.array([3e38, 3e38, -3e38], np.float32)
    _, top = logprobs(logits, 0, top_n=3)
    assert sum(math.exp(v) for _, v in top) == pytest.approx(1.0)
    assert top[0][1] == pytest.approx(math.log(0.5), abs=1e-6)


def test_logprobs_reject_broken_logits():
    with pytest.raises(ValueError):
        logprobs(np.full(3, -np.inf, np.float32), 0)
    with pytest.raises(ValueError):
        logprobs(np.array([0.0, np.nan], np.float32), 0)
