"""Token-history penalties, with llama.cpp's rules.

Ollama's Go engine dropped these (only its llama.cpp runner honoured them); pollama keeps
them so that `repeat_penalty` & co. mean what users of Ollama expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_F32_MAX = float(np.finfo(np.float32).max)


def penalized(
    logits: np.ndarray,
    history: Sequence[int],
    last_n: int = 64,
    repeat: float = 1.1,
    frequency: float = 0.0,
    presence: float = 0.0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids the last `last_n` ids of `history` penalize and their new logits (float32, or
    float64 where a value left float32's range), or None where nothing applies."""
    if last_n == 0 or len(history) == 0:
        return None
    # A non-positive repeat penalty has no meaning (it would flip or blow up logits): treat as off.
    repeat = float(repeat) if repeat > 0 else 1.0
    if repeat == 1.0 and frequency == 0 and presence == 0:
        return None

    window = np.asarray(history[-last_n:] if last_n > 0 else history, dtype=np.int64)
    ids, counts = np.unique(window, return_counts=True)
    # Ids outside the vocabulary (e.g. placeholders for image embeddings) have no logit.
    inside = (ids >= 0) & (ids < logits.size)
    ids, counts = ids[inside], counts[inside]
    if ids.size == 0:
        return None

    # llama.cpp's sign rule: shrinking a logit towards zero only lowers it if it is positive,
    # so positive logits are divided and the others multiplied. Counts only feed
    # frequency/presence; the repeat penalty applies once per distinct token.
    v = logits[ids].astype(np.float64)
    v = np.where(v <= 0, v * repeat, v / repeat)
    v -= counts * float(frequency) + float(presence)

    # Stay in float32 (the cheap path) unless a penalized value left its range, which only
    # happens to absurd logits near +-3.4e38; then float64 keeps them finite.
    finite = v[np.isfinite(v)]
    dtype = logits.dtype if finite.size == 0 or np.abs(finite).max() <= _F32_MAX else np.float64
    return ids, v.astype(dtype)


def apply_penalties(logits: np.ndarray, history: Sequence[int], out: np.ndarray | None = None, **settings) -> np.ndarray:
    """Penalize tokens seen in the last `last_n` ids of `history` (settings: penalized()'s
    last_n, repeat, frequency, presence); returns `logits` itself if nothing applies.

    Otherwise the result is a copy, written into `out` when it is given and fits (a
    sampler reuses one buffer rather than page-fault a fresh vocabulary-sized array
    every token).
    """
    change = penalized(logits, history, **settings)
    if change is None:
        return logits
    ids, values = change
    if out is None or out.dtype != values.dtype or out.shape != logits.shape:
        out = np.empty(logits.shape, values.dtype)
    np.copyto(out, logits)
    out[ids] = values
    return out
