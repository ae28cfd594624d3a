"""The check a context shift is proven with, on any model: evaluate tokens at some positions,
move them in the cache (KVCache.shift, the keys turned by the model) or not, and read the logits
of one more token after them. A test compares a shift from `start` to 0 with the same tokens
evaluated fresh at 0 (nothing is kept before the dropped positions, so the moved tokens saw
only each other, at the same distances: with RoPE their K/V must be the fresh ones)."""

from __future__ import annotations

import numpy as np


def unturned(ctx, layer, keys, offsets):
    """A shift's key turn that does nothing: what a test must see fail."""
    return keys


def logits_after(engine, tokens: list[int], start: int, next_token: int, *, shift: bool, turn=None) -> np.ndarray:
    """tokens evaluated at positions start.. (a StepEngine's sequence 0), moved down to 0 when
    `shift` (turning keys with the model's shift_keys, or `turn`); the logits of next_token
    evaluated after them."""
    engine.reset()
    engine.forward(tokens, start)
    position = start + len(tokens)
    if shift:
        if turn is None:
            engine.shift(0, 0, start)
        else:
            engine.cache.shift(0, 0, start, turn)
        position = len(tokens)
    return engine.forward([next_token], position)[-1]
