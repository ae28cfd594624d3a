"""What one request may ask of a runner: sizes past which it could only crash or exhaust memory.

Shared by the server (which refuses such a request with a 400 before it reaches a runner)
and the runner (which checks again, as defence, before it tokenizes or allocates anything).
Nothing here imports the backend: the server uses it too.

Prompt size. A prompt of more characters than `prompt_char_limit(num_ctx, chars_per_token)`
cannot fit in num_ctx tokens: a token of the model's vocabulary stands for at most
`max_token_chars` characters of input (its stored text: byte-level BPE stores one character
per byte, SentencePiece one per character, `▁` for a space), so a prompt of n characters
is at least n / max_token_chars tokens. The bound used is at least MIN_CHARS_PER_TOKEN (64)
characters a token, 16 times the ~4 characters a token of English text averages and beyond
any run of real text (SmolLM2's longest token is 81 characters of indentation, Qwen2.5's
128 spaces; those raise the bound for their models). Only prompts that tokenizers would
shrink by deleting text (whitespace around special tokens that strip it, WordPiece's
[UNK] for a whole unknown word) could fit beyond it; refusing those is no loss. So the
check needs no tokenization, and tokenizing what passes it costs at most num_ctx tokens'
worth of text.
"""

from __future__ import annotations

import os
from pathlib import Path

from pollama import envconfig

MIN_CHARS_PER_TOKEN = 64
MAX_THREADS_PER_CPU = 4
# A prompt longer than its context is truncated (as Ollama does by default) once tokenized:
# tokenizing holds the GIL that the engine thread needs, so the text may be at most this many
# contexts' worth (far beyond the 3x of a long pasted document in a small context).
TRUNCATED_CONTEXTS = 16
# Stop strings: each costs a few steps per generated character (see runner/stop.py) and its
# length in memory; a stop string is a delimiter, so these are far beyond any real use.
MAX_STOP_STRINGS = 256
MAX_STOP_CHARS = 4096
# Attention keeps scores and their softmax for every query of a batch against every cell of
# the context, in float32 (no flash attention); measured on SmolLM2 (num_ctx 4096, num_batch
# 512 -> 4096): 1.46x the scores alone, rounded up to 2.
ATTENTION_BYTES_PER_SCORE = 8
N_KV_PAD = 32  # the KV cache hands out cells in pages of this many (kvcache.cache.N_KV_PAD)
KV_READ_PAD = 64  # and holds a whole number of this many (kvcache.cache.KV_READ_PAD)


def max_token_chars(tokenizer) -> int:
    """Most input characters one token of this tokenizer stands for (its longest stored text)."""
    return max(map(len, tokenizer.vocab.tokens), default=1)


def chars_per_token(token_chars: int | None) -> int:
    """The characters-per-token bound for a model whose longest token has token_chars."""
    return max(MIN_CHARS_PER_TOKEN, int(token_chars or 0))


def prompt_char_limit(num_ctx: int, token_chars: int | None = None, truncate: bool = False) -> int:
    """Characters beyond which a text cannot fit in num_ctx tokens (see the module's note), or
    with truncate, in TRUNCATED_CONTEXTS contexts: a prompt cut to fit is tokenized whole first."""
    return max(1, num_ctx) * chars_per_token(token_chars) * (TRUNCATED_CONTEXTS if truncate else 1)


def too_long_message(what: str, chars: int, num_ctx: int, token_chars: int | None = None,
                     truncate: bool = False) -> str:
    limit = prompt_char_limit(num_ctx, token_chars, truncate)
    if truncate:
        return (f"{what} is too long to truncate: {chars} characters (at most {limit}, {TRUNCATED_CONTEXTS} "
                f"contexts of {num_ctx} tokens at {chars_per_token(token_chars)} characters a token)")
    return (f"{what} exceeds the context length: {chars} characters cannot fit in {num_ctx} tokens "
            f"(at most {limit} characters, {chars_per_token(token_chars)} a token)")


def max_threads() -> int:
    """The most threads a request may ask for (num_thread): MAX_THREADS_PER_CPU per CPU."""
    return MAX_THREADS_PER_CPU * (os.cpu_count() or 1)


def context_memory(*, n_layers: int, k_width: int, v_width: int, n_heads: int, num_ctx: int, num_batch: int,
                   num_parallel: int, kv_bytes: int = 2, flash_attention: bool = False) -> int:
    """Bytes a context of num_ctx tokens for num_parallel sequences needs at most: its K/V cache
    in every layer, and (without flash attention, which keeps no score matrix) the attention
    scores of a batch of num_batch tokens against all of it (the sequences share one cache,
    and attention reads every cell up to the last one in use)."""
    cells = -(-max(1, num_ctx) // N_KV_PAD) * N_KV_PAD * max(1, num_parallel)
    cells = -(-cells // KV_READ_PAD) * KV_READ_PAD
    kv = n_layers * cells * (k_width + v_width) * kv_bytes
    attention = 0 if flash_attention else min(num_batch, num_ctx) * cells * n_heads * ATTENTION_BYTES_PER_SCORE
    return kv + attention


def flash_attention_default() -> bool:
    """OLLAMA_FLASH_ATTENTION (envconfig.flash_attention): on unless a false value turns it off."""
    return envconfig.flash_attention()


def _cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, in use) of this process's memory cgroup (v2 or v1), where it has a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    root = Path("/sys/fs/cgroup")
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        # In a container the cgroup's own folder is often the mount's root.
        for folder in (base / rel.lstrip("/"), base):
            try:
                limit = (folder / files[0]).read_text().strip()
                used = int((folder / files[1]).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 1 << 60:  # "max" (v2) or ~2**63 (v1): no limit
                return int(limit), used
            break
    return None, None


def memory_total() -> int:
    """This machine's memory (or its cgroup's limit, if lower), in bytes."""
    import psutil

    total = psutil.virtual_memory().total
    limit, _ = _cgroup_memory()
    return min(total, limit) if limit else total


def memory_available() -> int:
    """Memory that could be allocated now without swapping (or past the cgroup's limit)."""
    import psutil

    available = psutil.virtual_memory().available
    limit, used = _cgroup_memory()
    return min(available, max(0, limit - used)) if limit else available


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"
