"""The whole sampler, end to end: what it may draw, how often, and reproducibly."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollama.sample import Sampler, SamplerOptions

# Every option off except temperature 1: draws must follow the plain softmax.
PLAIN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)


def opts(**kw):
    return SamplerOptions(**{**PLAIN, "seed": 42, **kw})


def draws(options, logits, n=2000, history=()):
    logits = np.asarray(logits, np.float32)
    s = Sampler(options, logits.size)
    return [s.sample(logits, history) for _ in range(n)]


def support(options, logits, n=2000):
    return sorted(set(draws(options, logits, n)))


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def test_defaults_are_ollamas():
    o = SamplerOptions()
    assert (o.temperature, o.top_k, o.top_p, o.min_p, o.typical_p) == (0.8, 40, 0.9, 0.0, 1.0)
    assert (o.repeat_penalty, o.repeat_last_n, o.presence_penalty, o.frequency_penalty, o.seed) == (1.1, 64, 0.0, 0.0, -1)


def test_from_options_takes_sampling_keys_only():
    o = SamplerOptions.from_options({"temperature": 0.2, "top_k": 5, "num_ctx": 4096, "stop": ["x"], "seed": None})
    assert o.temperature == 0.2 and o.top_k == 5 and o.seed == -1


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    s = Sampler(SamplerOptions(temperature=0.0), 1000)
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))


def test_temperature_zero_ignores_truncation_options():
    logits = np.array([0.0, 3.0, 1.0, 2.0], np.float32)
    # min_p = 1 and typical_p tiny would each allow other tokens or fail if they ran.
    o = SamplerOptions(temperature=0.0, top_k=2, top_p=0.01, min_p=1.0, typical_p=0.01, seed=1)
    assert support(o, logits, 50) == [1]


def test_top_k_1_is_always_argmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(500).astype(np.float32)
    assert support(opts(top_k=1, temperature=5.0), logits, 300) == [int(np.argmax(logits))]


def test_top_k_support_and_distribution():
    logits = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15], np.float32))
    d = np.array(draws(opts(top_k=3), logits, 20_000))
    assert set(d.tolist()) == {1, 3, 4}
    # renormalized over the three: 0.4, 0.3, 0.15 -> /0.85
    for tok, p in [(1, 0.4 / 0.85), (3, 0.3 / 0.85), (4, 0.15 / 0.85)]:
        assert abs((d == tok).mean() - p) < 0.015


@pytest.mark.parametrize("p, kept", [(0.0, [0]), (0.6, [0, 1]), (0.75, [0, 1, 2]), (0.95, [0, 1, 2, 3])])
def test_top_p_support(p, kept):
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    assert support(opts(top_p=p), logits) == kept


@pytest.mark.parametrize("p, kept", [(0.25, [0, 1, 2]), (0.35, [0, 1]), (0.9, [0])])
def test_min_p_support(p, kept):
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1], np.float32))
    assert support(opts(min_p=p), logits) == kept


def test_typical_p_can_exclude_the_most_probable_token():
    # See test_transforms: at typical_p 0.25 only token 1 (p=0.3) is typical enough.
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert support(opts(typical_p=0.25), logits, 300) == [1]
    assert support(opts(typical_p=0.5), logits) == [0, 1]


def test_softmax_comes_after_top_k():
    # top_k 2 renormalizes 0.4, 0.3 to 0.57, 0.43, so top_p 0.5 keeps only the first. Had
    # top_p seen the un-truncated probabilities (0.4 < 0.5) it would have kept two.
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    assert support(opts(top_k=2, top_p=0.5), logits) == [0]


def test_temperature_comes_before_top_p():
    # At temperature 1 the probabilities are 0.665, 0.245, 0.090: top_p 0.8 keeps two. At
    # 0.5 they are 0.867, 0.117, 0.016: top_p 0.8 keeps one.
    logits = [2.0, 1.0, 0.0]
    assert support(opts(top_p=0.8, temperature=1.0), logits) == [0, 1]
    assert support(opts(top_p=0.8, temperature=0.5), logits) == [0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_empirical_distribution_matches_softmax(temperature):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal(8).astype(np.float32) * 1.5
    n = 20_000
    counts = np.bincount(draws(opts(temperature=temperature), logits, n), minlength=8)
    expected = softmax(logits / temperature) * n
    assert np.abs(counts / n - expected / n).max() < 0.015
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def test_full_vocabulary_distribution_matches_softmax():
    # A large vocabulary takes the blocked draw path; mass sits in a few scattered tokens.
    n_vocab = 6000
    logits = np.full(n_vocab, -30.0, np.float32)
    hot = [3, 2047, 2048, 4500, 5999]
    logits[hot] = [1.0, 0.0, 2.0, 0.5, 1.5]
    n = 20_000
    d = np.array(draws(opts(), logits, n))
    p = softmax(logits)[hot]
    freq = np.array([(d == h).mean() for h in hot])
    assert np.abs(freq - p).max() < 0.015
    assert np.isin(d, hot).mean() > 0.999


def test_same_seed_same_sequence_different_seeds_differ():
    logits = np.zeros(1000, np.float32)
    a = draws(opts(seed=1234), logits, 50)
    assert a == draws(opts(seed=1234), logits, 50)
    assert a != draws(opts(seed=1235), logits, 50)
    # Negative seeds other than -1 are valid Ollama seeds too.
    assert draws(opts(seed=-5), logits, 50) == draws(opts(seed=-5), logits, 50)


def test_seed_minus_one_is_random():
    logits = np.zeros(1000, np.float32)
    assert draws(opts(seed=-1), logits, 50) != draws(opts(seed=-1), logits, 50)


def test_same_seed_same_sequence_in_another_process():
    code = (
        "import numpy as np\n"
        "from pollama.sample import Sampler, SamplerOptions\n"
        "s = Sampler(SamplerOptions(seed=99, top_k=0, top_p=1.0, repeat_penalty=1.0), 1000)\n"
        "print([s.sample(np.zeros(1000, np.float32)) for _ in range(30)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = draws(SamplerOptions(seed=99, top_k=0, top_p=1.0, repeat_penalty=1.0), np.zeros(1000), 30)
    assert out.strip() == str(here)


def test_bad_logits_are_clear_errors():
    s = Sampler(SamplerOptions(seed=1), 3)
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="-inf"):
        s.sample(np.full(3, -np.inf, np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(4, np.float32))
    g = Sampler(SamplerOptions(temperature=0), 3)
    with pytest.raises(ValueError, match="NaN"):
        g.sample(np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="-inf"):
        g.sample(np.full(3, -np.inf, np.float32))


def test_other_float_dtypes_are_accepted():
    logits = np.array([0.0, 5.0, 1.0])
    for dtype in (np.float16, np.float32, np.float64):
        assert support(opts(top_k=1), logits.astype(dtype), 5) == [1]


# Logits as a model might produce them, and worse: -inf masks, +inf, ties, huge values.
logit_values = st.one_of(
    st.floats(-50, 50, width=32),
    st.sampled_from([0.0, 1.0, -np.inf, np.inf, 3.0e38, -3.0e38, 1e-30]),
    st.floats(width=32, allow_nan=False),
)
sampler_options = st.builds(
    SamplerOptions,
    temperature=st.sampled_from([0.0, 1e-9, 0.1, 0.8, 1.0, 5.0, 1e6]),
    top_k=st.integers(-1, 70),
    top_p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.999, 1.0]),
    min_p=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    typical_p=st.sampled_from([0.0, 0.2, 0.9, 1.0]),
    repeat_penalty=st.sampled_from([0.0, 0.5, 1.0, 1.1, 2.0]),
    repeat_last_n=st.sampled_from([-1, 0, 3, 64]),
    presence_penalty=st.sampled_from([0.0, 0.5, -1.0]),
    frequency_penalty=st.sampled_from([0.0, 0.3]),
    seed=st.integers(-(2**63), 2**63 - 1),
)


def penalized(logits, history, o):
    """An independent, slow statement of llama.cpp's penalty rule, in float64."""
    x = logits.astype(np.float64)
    if o.repeat_last_n == 0:
        return x
    window = history if o.repeat_last_n < 0 else history[-o.repeat_last_n:]
    rp = o.repeat_penalty if o.repeat_penalty > 0 else 1.0
    for tok in set(window):
        if tok < len(x):
            x[tok] = x[tok] * rp if x[tok] <= 0 else x[tok] / rp
            x[tok] -= window.count(tok) * o.frequency_penalty + o.presence_penalty
    return x


@settings(max_examples=300, deadline=None)
@given(
    logits=hnp.arrays(np.float32, st.integers(1, 80), elements=logit_values),
    o=sampler_options,
    history=st.lists(st.integers(0, 90), max_size=10),
)
def test_sampled_token_is_always_allowed(logits, o, history):
    x = penalized(logits, history, o)
    assume(np.any(x > -np.inf))
    s = Sampler(o, logits.size)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        tok = s.sample(logits, history)
    assert isinstance(tok, int) and 0 <= tok < logits.size
    assert x[tok] > -np.inf
    if np.any(x == np.inf):
        assert x[tok] == np.inf
    if o.temperature <= 0:
        assert at_least(x[tok], x.max())
    elif 0 < o.top_k < x.size:
        assert at_least(x[tok], np.sort(x)[-o.top_k])  # among the k largest (ties allowed)


def at_least(a, b):
    # The sampler keeps penalized logits in float32, so near-ties may round either way.
    return a >= b or bool(np.isclose(a, b, rtol=1e-6, atol=0))


@settings(max_examples=100, deadline=None)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False), n=st.integers(1, 300), o=sampler_options)
def test_all_equal_logits_any_token_may_come(value, n, o):
    s = Sampler(o, n)
    tok = s.sample(np.full(n, value, np.float32))
    assert 0 <= tok < n


def test_all_equal_logits_are_uniform():
    n = 10
    counts = np.bincount(draws(opts(), np.full(n, 7.0), 20_000), minlength=n)
    assert np.abs(counts / 20_000 - 0.1).max() < 0.015
