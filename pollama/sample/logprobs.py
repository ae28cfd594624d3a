"""Log-probabilities for the API's `logprobs` / `top_logprobs`."""

from __future__ import annotations

import numpy as np


def logprobs(logits: np.ndarray, token: int, top_n: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of the raw logits (before any sampling option): the token's, and the top_n best, best first."""
    # Ollama reports the model's own distribution, not the one the sampler drew from,
    # so temperature, penalties and truncation play no part here.
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    if not np.isfinite(m):
        raise ValueError("logprobs need a finite largest logit")
    # Kept apart from m: m + log(total) would lose log(total) entirely when m is ~1e38.
    with np.errstate(under="ignore"):
        log_total = np.log(np.sum(np.exp(x - m)))

    top: list[tuple[int, float]] = []
    n = min(int(top_n), x.size)
    if n > 0:
        head = np.argpartition(x, x.size - n)[x.size - n:]
        head = head[np.argsort(-x[head], kind="stable")]
        top = [(int(i), float(x[i] - m - log_total)) for i in head]
    return float(x[token] - m - log_total), top
