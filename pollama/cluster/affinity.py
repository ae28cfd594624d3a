"""Which replica holds the K/V of a prompt's prefix: the table prefix-affinity routing reads.

A replica's runner keeps each sequence's K/V in a slot, and a request whose prompt starts
with a slot's tokens evaluates only the rest (pollama/runner's prefix cache). So a request
should go to the replica that last served a text its prompt starts with: the next turn of a
conversation (its prompt is the last prompt, the answer, and the new message), or another
request with the same long system prompt.

Texts are cut into blocks of BLOCK characters, and each block is named by a hash of the
whole text up to its end (a chain, so a name stands for the full prefix, not one block).
The table maps block names to the replica that last held them; a prompt's match is its
longest run of named leading blocks. Characters rather than tokens: the ingress has the
rendered prompt but not its tokens, and a shared prefix of characters is a shared prefix
of tokens but for the last few.

A match counts only when it covers at least MIN_SHARE of the prompt: a short common start
(the template's default system prompt, which every conversation of SmolLM2 shares) must
not pull every conversation onto one replica; there the least-loaded replica is better.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

BLOCK = 64  # characters per block
MIN_SHARE = 0.5  # the share of a prompt a match must cover to pick its replica
MAX_BLOCKS = 1 << 16  # names kept (least recently used dropped): ~64 MiB of text covered


def block_names(text: str, block: int = BLOCK) -> list[bytes]:
    """The chained names of text's whole blocks, first block first."""
    names, chain = [], b""
    for end in range(block, len(text) + 1, block):
        chain = hashlib.blake2b(chain + text[end - block:end].encode(), digest_size=12).digest()
        names.append(chain)
    return names


class PrefixTable:
    """Block name -> replica id, least recently used dropped beyond max_blocks; thread-safe
    (the ingress's routes use it on their event loop, but nothing binds it to one thread)."""

    def __init__(self, block: int = BLOCK, min_share: float = MIN_SHARE, max_blocks: int = MAX_BLOCKS):
        self.block, self.min_share, self.max_blocks = block, min_share, max_blocks
        self._owner: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, text: str, replica: str) -> None:
        """replica now holds the K/V of text (a prompt, or a prompt and its answer)."""
        with self._lock:
            for name in block_names(text, self.block):
                self._owner[name] = replica
                self._owner.move_to_end(name)
            while len(self._owner) > self.max_blocks:
                self._owner.popitem(last=False)

    def match(self, text: str) -> tuple[str | None, int]:
        """(replica, characters matched) for text's longest recorded prefix; (None, 0) if none."""
        names = block_names(text, self.block)
        with self._lock:
            for i in range(len(names) - 1, -1, -1):
                replica = self._owner.get(names[i])
                if replica is not None:
                    self._owner.move_to_end(names[i])
                    return replica, (i + 1) * self.block
        return None, 0

    def preferred(self, text: str) -> str | None:
        """The replica to send text to, if one holds enough of it (MIN_SHARE); else None."""
        replica, matched = self.match(text)
        if replica is None or matched < self.min_share * len(text):
            return None
        return replica

    def forget(self, replica: str) -> None:
        """A replica is gone: none of its blocks is held any more."""
        with self._lock:
            for name in [n for n, r in self._owner.items() if r == replica]:
                del self._owner[name]
