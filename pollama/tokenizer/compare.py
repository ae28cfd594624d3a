"""Whether two GGUF models read token ids alike: a draft model's ids are proposed as its
model's own, so they must name the same tokens, with the same special ones."""

from __future__ import annotations

from typing import Any, Mapping

# What decides how ids are read and written back: the algorithm, every token, the special ids.
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id",
                  "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
                  "tokenizer.ggml.add_bos_token")


def tokenizer_mismatch(model: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """What differs between two GGUF metadata's tokenizers, in a few words ("" when nothing)."""
    for key in TOKENIZER_KEYS:
        left, right = model.get(key), other.get(key)
        if left == right:
            continue
        if key == "tokenizer.ggml.tokens" and isinstance(left, list) and isinstance(right, list):
            if len(left) != len(right):
                return f"{len(right)} tokens, not {len(left)}"
            at = next(i for i, (x, y) in enumerate(zip(left, right)) if x != y)
            return f"token {at} is {right[at]!r}, not {left[at]!r}"
        return f"{key} is {right!r}, not {left!r}"
    return ""
