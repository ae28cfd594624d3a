"""The steps between logits and a draw, each a small function on a candidate set.

A candidate set is a pair `(ids, values)` of equal-length arrays: token ids and their
logits (before `softmax`) or probabilities (after). Steps do not promise any order
except where noted; those that need one sort only what they must, since a full sort of a
262k vocabulary costs ~10 ms and a decode step has a budget of a few.
"""

from __future__ import annotations

import numpy as np

Candidates = tuple[np.ndarray, np.ndarray]

# top_p and typical_p need their tokens in order only up to a crossing point that is nearly
# always within the first few dozen: partitioning out a small head, and growing it when it
# falls short, costs ~0.3 ms a try where a full argsort of 150k probabilities costs ~5 ms.
_HEAD = 64
_HEAD_GROWTH = 8
_DRAW_BLOCK = 1024


def top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> Candidates:
    """Keep the k largest logits, sorted descending; k <= 0 or k >= size keeps all, unsorted."""
    n = logits.size
    if k <= 0 or k >= n:
        return ids, logits
    head = np.argpartition(logits, n - k)[n - k:]
    head = head[np.argsort(-logits[head], kind="stable")]
    return ids[head], logits[head]


def softmax(ids: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> Candidates:
    """Temperature-scaled softmax over the candidates; raises ValueError if none can be drawn."""
    m = logits.max()
    if np.isnan(m):
        raise ValueError("logits contain NaN")
    if m == -np.inf:
        raise ValueError("no token can be sampled: every logit is -inf")
    if m == np.inf:
        # exp(inf - inf) is NaN; the limit is an even split among the +inf tokens.
        probs = (logits == np.inf).astype(logits.dtype)
    else:
        # Subtracting the max before dividing keeps every exponent <= 0, so huge logits or
        # a tiny temperature can only underflow (or overflow to -inf), both meaning prob 0.
        with np.errstate(over="ignore", under="ignore"):
            probs = logits - m
            probs /= max(float(temperature), 1e-7)
            np.exp(probs, out=probs)  # in place: a fresh vocab-sized array costs page faults
    probs /= probs.sum()
    return ids, probs


def _keep_until_mass(key: np.ndarray, probs: np.ndarray, p: float) -> np.ndarray | None:
    """Indices in ascending key order up to and including the one where cumulative probability first exceeds p.

    Returns None when the total never exceeds p. Only a head of the smallest keys is
    sorted, grown until it holds the crossing point.
    """
    n = key.size
    m = min(n, _HEAD)
    while True:
        head = np.argpartition(key, m - 1)[:m] if m < n else np.arange(n)
        head = head[np.argsort(key[head], kind="stable")]
        cum = np.cumsum(probs[head].astype(np.float64))
        cut = int(np.searchsorted(cum, p, side="right"))  # first index with cum > p
        if cut < m:
            return head[: cut + 1]
        if m == n:
            return None
        m = min(n, m * _HEAD_GROWTH)


def top_p(ids: np.ndarray, probs: np.ndarray, p: float) -> Candidates:
    """Keep the most probable tokens up to and including the one whose cumulative probability exceeds p."""
    if p >= 1.0:
        return ids, probs
    keep = _keep_until_mass(-probs, probs, max(float(p), 0.0))
    if keep is None:  # rounding kept the total at or below p: nothing to cut
        return ids, probs
    return ids[keep], probs[keep]


def min_p(ids: np.ndarray, probs: np.ndarray, p: float) -> Candidates:
    """Drop tokens whose probability is below p times the largest probability."""
    if p <= 0.0:
        return ids, probs
    keep = probs >= probs.max() * min(float(p), 1.0)
    return ids[keep], probs[keep]


def typical_p(ids: np.ndarray, probs: np.ndarray, p: float) -> Candidates:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to mass p."""
    if p >= 1.0:
        return ids, probs
    q = probs / probs.sum()
    with np.errstate(divide="ignore"):
        surprise = -np.log(q)  # +inf for q == 0: least typical, sorted last
    nz = q > 0
    entropy = float(np.sum(q[nz] * surprise[nz], dtype=np.float64))
    keep = _keep_until_mass(np.abs(surprise - entropy), q, max(float(p), 0.0))
    if keep is None:
        return ids, probs
    return ids[keep], probs[keep]


def draw(ids: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one id with probability proportional to `probs` (one uniform number from rng)."""
    # Inverse-CDF in two levels: a cumulative sum over the whole vocabulary costs ~1 ms at
    # 150k, while block sums are ~30x cheaper; only the chosen block is summed in order.
    n_full = probs.size // _DRAW_BLOCK * _DRAW_BLOCK
    # Sums in float64 so that rounding cannot starve the tail; no float64 copy of the whole.
    blocks = probs[:n_full].reshape(-1, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    if n_full < probs.size:
        blocks = np.append(blocks, probs[n_full:].sum(dtype=np.float64))
    block_cdf = np.cumsum(blocks)
    target = rng.random() * block_cdf[-1]
    b = _search(block_cdf, blocks, target)
    start = b * _DRAW_BLOCK
    inner = probs[start : start + _DRAW_BLOCK].astype(np.float64)
    target -= block_cdf[b - 1] if b > 0 else 0.0
    return int(ids[start + _search(np.cumsum(inner), inner, target)])


def _search(cdf: np.ndarray, weights: np.ndarray, target: float) -> int:
    """Index i with cdf[i-1] <= target < cdf[i]; rounding past the end falls back to the last weighted one."""
    i = int(np.searchsorted(cdf, target, side="right"))
    if i >= cdf.size:
        i = int(np.flatnonzero(weights)[-1])
    return i
