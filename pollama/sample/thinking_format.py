"""Structured output after a thinking block: the constraint that bounds the thinking, then
hands over to the format's grammar (constraint.py's TokenConstraint).
"""

from __future__ import annotations

import numpy as np


def thinking_budget(num_predict: int) -> int:
    """Tokens a thinking block may take before structured output: half of num_predict when it
    is set, so the structure has the other half; else 1024."""
    return max(1, num_predict // 2) if num_predict > 0 else 1024


class ThinkingThenFormat:
    """A thinking block, then structured output: the constraint for a format with thinking on.

    The thinking text is free, but it may not end the answer (end-of-generation tokens are
    masked) and it has a budget of tokens: once spent, the closing tag is forced. So every
    answer reaches the format, whose grammar then rules until the structure is complete. A
    small model that never closes its thinking would otherwise give no structured output at
    all (Ollama's longest-standing structured-output complaint, #8063).
    """

    def __init__(self, tokenizer, inner, closing: str, budget: int):
        self.tokenizer = tokenizer
        self.straddling = _tokens_straddling(tokenizer, closing)
        self.inner = inner
        self.closing = closing
        self.budget = budget
        self.closing_ids = tokenizer.encode(closing, add_special=False, parse_special=True)
        self.thinking_tokens = 0
        self.forced: list[int] = []  # the closing tag's tokens still to come, once the budget is spent
        self.in_format = False
        self._tail = ""

    def mask(self):
        if self.in_format:
            return self.inner.mask()
        allowed = np.zeros(self.tokenizer.vocab_size, dtype=bool)
        if self.forced:
            allowed[self.forced[0]] = True
            return allowed
        allowed[:] = True
        allowed[[t for t in self.tokenizer.eog_ids if t < len(allowed)]] = False
        allowed[self.straddling] = False
        return allowed

    def accept(self, token: int) -> None:
        if self.in_format:
            self.inner.accept(token)
            return
        if self.forced:
            self.forced.pop(0)
            self.in_format = not self.forced
            return
        self.thinking_tokens += 1
        self._tail = (self._tail + self.tokenizer.decode([int(token)]))[-4 * len(self.closing):]
        if self.closing in self._tail:
            self.in_format = True
        elif self.thinking_tokens >= self.budget:
            self.forced = list(self.closing_ids)

    @property
    def done(self) -> bool:
        return self.in_format and self.inner.done


_straddling_cache: dict[tuple[int, str], list[int]] = {}


def _tokens_straddling(tokenizer, closing: str) -> list[int]:
    """Tokens that would end the closing tag and go on past it in one piece (">{"): the format's
    grammar starts after the tag and could not see their rest, so thinking may not use them."""
    key = (id(tokenizer), closing)
    if key not in _straddling_cache:
        tag = closing.encode()
        found = []
        for token in range(tokenizer.vocab_size):
            piece = tokenizer.token_piece(token, special=True)
            for end in range(1, min(len(piece), len(tag))):
                if tag.endswith(piece[:end]) and piece[end:].strip():
                    found.append(token)
                    break
        _straddling_cache[key] = found
    return _straddling_cache[key]
