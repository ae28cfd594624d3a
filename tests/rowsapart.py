"""The check that speculative decoding stays exact on a model: a batch of the next token and
8 drafts, computed rows apart, must give each row the very logits of decoding those tokens one
at a time (the drafts are the greedy tokens, so every row is compared)."""

from __future__ import annotations

import numpy as np

from pollama.runner.engine import Part, make_batch


def rows_apart_and_one_at_a_time(engine, prompt: list[int], steps: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """(logits of the batch computed rows apart, logits of the same tokens decoded one by one)
    after `prompt`, on a StepEngine."""
    logits, _ = engine.prefill(prompt)
    tokens = [int(np.argmax(logits))]
    one_at_a_time = []
    for _ in range(steps):
        one_at_a_time.append(engine.decode(tokens[-1]))
        tokens.append(int(np.argmax(one_at_a_time[-1])))
    engine.cache.remove(0, len(prompt))
    batch = make_batch(engine.model, [Part(0, len(prompt), tokens[:steps], "all")], rows_apart=True)
    return engine.run(batch, engine.cache.plan(batch)), np.stack(one_at_a_time)
