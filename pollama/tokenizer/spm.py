"""SentencePiece BPE (tokenizer.ggml.model = llama), as llama.cpp's llm_tokenizer_spm encodes it."""

from __future__ import annotations

from .merge import merge_adjacent


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

        def priority(left: str, right: str) -> float | None:
            i = tok.get(left + right)
            # the highest score first, ties to the leftmost pair (llm_bigram_spm::comparator)
            return None if i is None else -scores[i]

        syms = merge_adjacent(list(text), priority)  # from one symbol per code point
        # Every merged symbol is a token (merges only happen into tokens), so a symbol that is no
        # token is a single code point: emit its UTF-8 bytes as byte tokens.
        byte_ids = self.byte_ids
        for s in syms:
            t = tok.get(s)
            if t is not None:
                out.append(t)
            else:
                for b in s.encode("utf-8", "surrogateescape"):
                    if byte_ids[b] is not None:
                        out.append(byte_ids[b])
