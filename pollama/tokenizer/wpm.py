"""WordPiece (tokenizer.ggml.model = bert), as llama.cpp's llm_tokenizer_wpm encodes it.

The GGUF vocabulary stores a word-initial piece "x" as "▁x" and a continuation "##x" as "x".
"""

from __future__ import annotations

import unicodedata

import regex

_WS, _CONTROL, _MARK, _PUNCT, _SYMBOL, _OTHER = range(6)
_CLASSES = [(regex.compile(p), c) for p, c in (
    (r"\s", _WS), (r"\p{C}", _CONTROL), (r"\p{M}", _MARK), (r"\p{P}", _PUNCT), (r"\p{S}", _SYMBOL),
)]


def _is_chinese(cp: int) -> bool:
    # The CJK blocks BERT isolates; 0x2B920 (not 0x2B820) follows HF's Rust code, as llama.cpp does.
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class _CharInfo(dict):
    """char -> (class, its first NFD code point, its lower-case form), computed on first use."""

    def __missing__(self, ch: str) -> tuple[int, str, str]:
        base = unicodedata.normalize("NFD", ch)[0]
        info = (next((c for rx, c in _CLASSES if rx.match(ch)), _OTHER), base, ch.lower()[0])
        self[ch] = info
        return info


_INFO = _CharInfo()


def split_words(text: str, lowercase: bool = True, strip_accents: bool = True) -> list[str]:
    """BERT's basic tokenizer: normalize, drop controls, split on whitespace, isolate punctuation and CJK."""
    words: list[str] = []
    word: list[str] = []
    info = _INFO
    for ch in text:
        if strip_accents:
            # llama.cpp keeps only the first code point of each character's decomposition
            ch = info[ch][1]
        cls, _, lower = info[ch]
        if cls == _WS:
            if word:
                words.append("".join(word))
                word = []
            continue
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or cls == _CONTROL or strip_accents and cls == _MARK:
            continue
        s = lower if lowercase else ch
        if cls == _PUNCT or cp < 0x7F and cls == _SYMBOL or _is_chinese(cp):
            if word:
                words.append("".join(word))
                word = []
            words.append(s)
        else:
            word.append(s)
    if word:
        words.append("".join(word))
    return words


class WPMModel:
    """Greedy longest-match-first WordPiece over the words of a text."""

    def __init__(self, token_to_id: dict[str, int], unk_id: int | None, lowercase: bool, strip_accents: bool):
        self.token_to_id = token_to_id
        self.unk_id = unk_id
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_len = max(map(len, token_to_id))

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of one raw text fragment to `out`."""
        tok, max_len = self.token_to_id, self.max_len
        for word in split_words(text, self.lowercase, self.strip_accents):
            w = "\u2581" + word
            n = len(w)
            start = len(out)
            i = 0
            while i < n:
                for j in range(min(n, i + max_len), i, -1):
                    t = tok.get(w[i:j])
                    if t is not None:
                        out.append(t)
                        i = j
                        break
                else:
                    del out[start:]  # one piece has no match: the whole word is unknown
                    break
            if len(out) == start and self.unk_id is not None:
                out.append(self.unk_id)
