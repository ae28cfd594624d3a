"""SentencePiece BPE (tokenizer.ggml.model = llama), as llama.cpp's llm_tokenizer_spm encodes it."""

from __future__ import annotations

import heapq


class SPMModel:
    """Merges adjacent symbols whose concatenation is a token, highest score first."""

    def __init__(self, token_to_id: dict[str, int], scores: list[float], unk_id: int | None):
        self.token_to_id = token_to_id
        self.scores = scores
        # Byte fallback: <0xXX> tokens, else a token that is the raw byte itself, else <unk>.
        self.byte_ids: list[int | None] = []
        for b in range(256):
            i = token_to_id.get(f"<0x{b:02X}>")
            if i is None:
                i = token_to_id.get(bytes([b]).decode("utf-8", "surrogateescape"), unk_id)
            self.byte_ids.append(i)

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of one fragment, whose spaces are already escaped as U+2581."""
        tok, scores = self.token_to_id, self.scores
        syms = list(text)  # one symbol per code point
        n = len(syms)
        if n == 0:
            return
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))

        def bigram(left: int, right: int) -> tuple[float, int, int, int] | None:
            text = syms[left] + syms[right]
            i = tok.get(text)
            # max-heap on score, ties to the leftmost pair (llm_bigram_spm::comparator)
            return None if i is None else (-scores[i], left, right, len(text))

        heap = [b for b in (bigram(i, i + 1) for i in range(n - 1)) if b is not None]
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls or not rs or len(ls) + len(rs) != size:
                continue  # stale: a side was merged away or grew
            syms[left] = ls + rs
            syms[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after != -1:
                prv[after] = left
            for a, b in ((prv[left], left), (left, after)):
                if a != -1 and b != -1:
                    new = bigram(a, b)
                    if new is not None:
                        heapq.heappush(heap, new)

        # Every merged symbol is a token (merges only happen into tokens), so a symbol that is no
        # token is a single code point: emit its UTF-8 bytes as byte tokens.
        byte_ids = self.byte_ids
        i = 0
        while i != -1:
            s = syms[i]
            t = tok.get(s)
            if t is not None:
                out.append(t)
            else:
                for b in s.encode("utf-8", "surrogateescape"):
                    if byte_ids[b] is not None:
                        out.append(byte_ids[b])
            i = nxt[i]
