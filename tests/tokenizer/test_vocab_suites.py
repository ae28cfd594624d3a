"""llama.cpp's tokenizer conformance suites (shared/testdata/vocab): exact ids and round trips."""

from __future__ import annotations

import unicodedata


def test_ids_match_llamacpp(suite_tokenizer, suite_cases):
    """Every case of the suite gives exactly llama.cpp's ids (no BOS/EOS, specials as text)."""
    wrong = []
    for text, expected in suite_cases:
        got = suite_tokenizer.encode(text, add_special=False, parse_special=False)
        if got != expected:
            wrong.append(f"{text!r}:\n  expected {expected}\n  got      {got}")
    assert not wrong, f"{len(wrong)}/{len(suite_cases)} cases differ:\n" + "\n".join(wrong)


def test_decode_round_trip(suite_tokenizer, suite_kind, suite_cases):
    """decode() gives the input back: exactly for byte-level BPE, after the added dummy space for
    SentencePiece, and as the normalized words for WordPiece."""
    tok = suite_tokenizer
    for text, expected in suite_cases:
        decoded = tok.decode(expected)
        if suite_kind == "bpe":
            assert decoded == text
        elif suite_kind == "spm":
            # the tokenizer escaped a leading " " it added; decode shows it, detokenize drops it
            prefix = " " if text and tok.vocab.add_space_prefix else ""
            assert decoded == prefix + text
            assert tok.detokenize(expected) == text
        else:
            words = _bert_words(text)
            unknown = expected.count(tok.unk_id)
            got = decoded.split()
            if unknown == 0:
                assert got == words, text
            else:
                # an unknown word decodes to nothing (its [UNK] is a control token)
                assert len(got) == len(words) - unknown and _is_subsequence(got, words), text


def test_encode_with_specials_adds_them_as_llamacpp(suite_tokenizer, suite_kind):
    """add_special wraps the ids as the vocabulary asks ([CLS] ... [SEP] for WordPiece)."""
    tok = suite_tokenizer
    plain = tok.encode("Hello world", add_special=False)
    wrapped = tok.encode("Hello world", add_special=True)
    if suite_kind == "wpm":
        assert wrapped == [tok.bos_id, *plain, tok.sep_id]
    else:
        assert wrapped == ([tok.bos_id] if tok.add_bos else []) + plain + ([tok.eos_id] if tok.add_eos else [])


def _bert_words(text: str) -> list[str]:
    """BERT's basic tokenization, written independently with unicodedata: NFD, no accents,
    lower case, no control characters, punctuation and CJK ideographs split off."""
    words, word = [], ""
    for ch in unicodedata.normalize("NFD", text):
        cat = unicodedata.category(ch)
        if ch.isspace() and ch not in "\x1c\x1d\x1e\x1f":
            words, word = words + [word] if word else words, ""
        elif cat == "Mn" or cat[0] == "C" or ch == "\ufffd":
            continue
        elif cat[0] == "P" or (ord(ch) < 0x7F and cat[0] == "S") or _is_cjk(ord(ch)):
            words, word = words + ([word] if word else []) + [ch.lower()], ""
        else:
            word += ch.lower()
    return words + [word] if word else words


def _is_cjk(cp: int) -> bool:
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F or 0xF900 <= cp <= 0xFAFF


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)
