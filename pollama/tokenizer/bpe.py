"""BPE, merging as llama.cpp's llm_tokenizer_bpe does: byte-level (tokenizer.ggml.model = gpt2) or
over raw UTF-8 with <0xXX> byte fallback (SentencePiece-style, tokenizer.ggml.model = gemma4)."""

from __future__ import annotations

from collections.abc import Sequence

from .merge import merge_adjacent
from .pretokenize import PreTokenizer, byte_encode, splitter

_CACHE_LIMIT = 1 << 17  # words; a prompt rarely has more than a few thousand distinct ones


class BPEModel:
    """Encodes text fragments (already free of special tokens) into ids."""

    def __init__(self, token_to_id: dict[str, int], merges: Sequence[str], pre: PreTokenizer):
        self.token_to_id = token_to_id
        # "left right" -> rank. Keyed by the merge line itself: byte-level symbols never contain a
        # space, so "left right" splits exactly where llama.cpp splits it. Built from the end so
        # that the first rank of a repeated line wins.
        self.ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1), strict=True))
        self.pre = pre
        self.splitter = splitter(pre.regexes)
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of one raw text fragment to `out`."""
        cache = self._cache
        for word in self.splitter.split(text):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                ids = cache[word] = tuple(self._encode_word(byte_encode(word) if self.pre.byte_level else word))
            out.extend(ids)

    def _encode_word(self, word: str) -> list[int]:
        tok = self.token_to_id
        if self.pre.ignore_merges or (self.pre.whole_newline_runs and not word.strip("\n")):
            i = tok.get(word)
            if i is not None:
                return [i]
        out = []
        for sym in self._merge(word):
            i = tok.get(sym)
            if i is not None:
                out.append(i)
                continue
            # A symbol the merges built but the vocabulary lacks: llama.cpp looks up each of its
            # UTF-8 bytes as a one-byte token (SentencePiece-style: <0xXX>) and drops those that
            # are not tokens either.
            for b in sym.encode("utf-8", "surrogateescape"):
                i = tok.get(bytes([b]).decode("utf-8", "surrogateescape") if self.pre.byte_level else f"<0x{b:02X}>")
                if i is not None:
                    out.append(i)
        return out

    def _merge(self, word: str) -> list[str]:
        """Apply merges lowest rank first, leftmost first among equal ranks; return the symbols."""
        ranks = self.ranks
        return merge_adjacent(list(word), lambda left, right: ranks.get(left + " " + right))
