"""What a sequence keeps when it does not fit its context: Ollama's truncation and shift rules.

A prompt longer than the context is cut to its first `keep` tokens and its end; a generation
that fills the context drops the tokens after the first `keep` until about half of the rest
is free (a context shift: the cache moves the later tokens down, see kvcache.KVCache.shift),
and goes on. `keep` is the request's num_keep (default 4; negative: the whole prompt) plus
the BOS token the tokenizer adds, as llama-server counts it (Ollama passes num_keep to it as
n_keep), and always leaves at least one token to drop.

Both cuts leave the same room: a truncated prompt is as long as the context right after a
shift, (num_ctx - keep) / 2 tokens short of full (Ollama's contextShiftPromptLimit, and its
runner's ShiftDiscard).
"""

from __future__ import annotations

from typing import Sequence

from pollama.models import multimodal
from pollama.models.multimodal import Item


def keep_count(num_keep: int, prompt_length: int, num_ctx: int, adds_bos: bool) -> int:
    """How many tokens at the start of a sequence no cut removes."""
    keep = prompt_length if num_keep < 0 else num_keep + int(adds_bos)
    return max(0, min(keep, prompt_length, num_ctx - 1))


def room_after_cut(num_ctx: int, keep: int) -> int:
    """Free cells a cut leaves: half of those after the kept ones, at least one."""
    return max((num_ctx - keep) // 2, 1)


def truncate_prompt(items: Sequence[Item], num_ctx: int, keep: int) -> list[Item]:
    """A prompt that does not fit (len >= num_ctx) as its first `keep` items and its end, as
    long as the context right after a shift; an image block is never cut (its whole block goes)."""
    limit = num_ctx - room_after_cut(num_ctx, keep)
    tail = len(items) - (limit - keep)
    bounds = multimodal.block_bounds(items, tail) if tail < len(items) else None
    if bounds is not None and bounds[0] < tail:
        tail = bounds[1]  # the tail would start inside an image: start after it
    return list(items[:keep]) + list(items[tail:])


def shift_discard(items: Sequence[Item], keep: int, num_ctx: int) -> int:
    """How many items after the first `keep` a shift drops from a full context: enough that
    room_after_cut cells are free, more if that would end inside an image block; 0 if there is
    nothing to drop."""
    free = num_ctx - len(items)
    end = keep + max(room_after_cut(num_ctx, keep) - free, 0)
    end = min(end, len(items))
    bounds = multimodal.block_bounds(items, end) if end < len(items) else None
    if bounds is not None and bounds[0] < end:
        end = bounds[1]
    return end - keep
