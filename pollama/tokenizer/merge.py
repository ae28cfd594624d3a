"""The merge loop BPE and SentencePiece share (llama.cpp's llm_tokenizer_bpe and _spm): adjacent
symbols in a linked list, candidate pairs in a heap, best pair first."""

from __future__ import annotations

import heapq
from collections.abc import Callable


def merge_adjacent(symbols: list[str], priority: Callable[[str, str], float | None]) -> list[str]:
    """Merge adjacent symbols while some pair has a priority, the lowest first and the leftmost
    among equal ones; return the symbols left, in order. priority(left, right) is None for a
    pair that does not merge."""
    syms = list(symbols)
    n = len(syms)
    if n < 2:
        return syms
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        p = priority(syms[i], syms[i + 1])
        if p is not None:
            heap.append((p, i, i + 1, syms[i] + syms[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, text = heapq.heappop(heap)
        # Stale entry: one side was merged away or grew since it was queued.
        if not syms[left] or not syms[right] or syms[left] + syms[right] != text:
            continue
        syms[left] = text
        syms[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prv[after] = left
        for a, b in ((prv[left], left), (left, after)):
            if a != -1 and b != -1:
                p = priority(syms[a], syms[b])
                if p is not None:
                    heapq.heappush(heap, (p, a, b, syms[a] + syms[b]))
    return [s for s in syms if s]
