"""The algorithms on small hand-made vocabularies, where each rule of llama.cpp can be seen alone."""

from __future__ import annotations

import logging
import random

import pytest

from pollama.tokenizer import load_tokenizer
from pollama.tokenizer.pretokenize import PRE_TOKENIZERS, byte_encode, splitter

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def spm(pieces: dict[str, float], specials: dict[str, int] | None = None, **keys):
    """A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then `pieces` (text -> score)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for text, score in pieces.items():
        tokens.append(text), types.append(NORMAL), scores.append(score)
    for text, ttype in (specials or {}).items():
        tokens.append(text), types.append(ttype), scores.append(0.0)
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
          "tokenizer.ggml.token_type": types}
    return load_tokenizer({**md, **keys})


def bpe(tokens: list[str], merges: list[str], pre: str = "gpt-2", types: list[int] | None = None, **keys):
    """A byte-level BPE vocabulary from plain texts (byte-encoded here) and merges."""
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
          "tokenizer.ggml.tokens": [byte_encode(t) if (types is None or types[i] == NORMAL) else t
                                    for i, t in enumerate(tokens)],
          "tokenizer.ggml.token_type": types or [NORMAL] * len(tokens),
          "tokenizer.ggml.merges": [" ".join(byte_encode(p) for p in m.split(" ")) for m in merges]}
    return load_tokenizer({**md, **keys})


def texts(tok, ids):
    return [tok.token_text(i) for i in ids]


# --- SentencePiece -------------------------------------------------------------------------------

def test_spm_merges_highest_score_first():
    tok = spm({"▁": -1, "a": -1, "b": -1, "c": -1, "ab": -2, "bc": -1})
    # "bc" outscores "ab", so a + bc, and "▁a" is no token
    assert texts(tok, tok.encode("abc", add_special=False)) == ["▁", "a", "bc"]
    tok = spm({"▁": -1, "a": -1, "b": -1, "c": -1, "ab": -2, "bc": -1, "abc": -5})
    assert texts(tok, tok.encode("abc", add_special=False)) == ["▁", "abc"]  # then a + bc merge too


def test_spm_equal_scores_merge_leftmost_first():
    tok = spm({"a": -1, "b": -1, "c": -1, "ab": -2, "bc": -2}, **{"tokenizer.ggml.add_space_prefix": False})
    assert texts(tok, tok.encode("abc", add_special=False)) == ["ab", "c"]


def test_spm_byte_fallback_and_dummy_prefix():
    tok = spm({"▁": -1, "h": -1, "i": -1, "▁h": -2, "▁hi": -3})
    ids = tok.encode("hi é", add_special=True)
    # BOS, "▁hi", "▁", then é's two UTF-8 bytes as byte tokens
    assert texts(tok, ids) == ["<s>", "▁hi", "▁", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == " hi é"
    assert tok.detokenize(ids) == " hi é"  # the leading space goes only when text starts the ids
    assert tok.detokenize(ids[1:]) == "hi é"


def test_spm_prefix_space_after_each_special_token():
    tok = spm({"▁": -1, "x": -1, "▁x": -2}, specials={"<sep>": CONTROL})
    ids = tok.encode("x<sep>x", add_special=False, parse_special=True)
    assert texts(tok, ids) == ["▁x", "<sep>", "▁x"]
    # not parsed: the control text is plain text, spelled out with byte tokens
    ids = tok.encode("x<sep>x", add_special=False, parse_special=False)
    assert "<sep>" not in texts(tok, ids) and tok.decode(ids) == " x<sep>x"


# --- byte-level BPE ------------------------------------------------------------------------------

def test_bpe_lowest_rank_first_and_leftmost_ties():
    tok = bpe(["a", "b", "c", "ab", "bc", "abc"], ["b c", "a b", "a bc"])
    assert texts(tok, tok.encode("abc")) == ["abc"]  # b+c (rank 0), then a+bc
    tok = bpe(["a", "ab", "aa"], ["a a", "a b"])
    assert texts(tok, tok.encode("aaa")) == ["aa", "a"]  # equal pairs: the leftmost merges first


def test_bpe_ignore_merges_for_llama3_words():
    # "abc" is a token no merge reaches; Llama 3's pre-tokenizer takes whole-word tokens first
    vocab = ["a", "b", "c", "ab", "abc"]
    tok = bpe(vocab, ["a b"], pre="gpt-2")
    assert texts(tok, tok.encode("abc")) == ["ab", "c"]
    tok = bpe(vocab, ["a b"], pre="llama-bpe", **{"tokenizer.ggml.bos_token_id": 0})
    assert texts(tok, tok.encode("abc", add_special=False)) == ["abc"]
    assert tok.add_bos  # llama3-style pre-tokenizers add BOS by default


def test_bpe_merge_without_token_falls_back_to_single_bytes():
    tok = bpe(["a", "b"], ["a b"])  # "ab" is merged but is not a token
    assert texts(tok, tok.encode("ab")) == ["a", "b"]


# --- special tokens ------------------------------------------------------------------------------

def test_specials_split_longest_first_like_llamacpp():
    types = [NORMAL] * 4 + [CONTROL, CONTROL]
    tok = bpe(["a", "b", "c", "d", "ab", "bcd"], [], types=types)
    # llama.cpp splits out the longest special everywhere first, so "bcd" wins over "ab"
    assert texts(tok, tok.encode("abcd")) == ["a", "bcd"]
    assert texts(tok, tok.encode("abcd", parse_special=False)) == ["a", "b", "c", "d"]


def test_user_defined_tokens_split_even_when_specials_are_not_parsed():
    tok = bpe(["a", "b", "<tool>"], [], types=[NORMAL, NORMAL, USER_DEFINED])
    assert texts(tok, tok.encode("a<tool>b", parse_special=False)) == ["a", "<tool>", "b"]


def test_phi3_specials_eat_the_whitespace_after_them(vocab):
    """llama.cpp's phi-3 rule: control tokens rstrip, so the newline after <|user|> disappears."""
    tok = vocab("phi-3")
    ids = tok.encode("<|user|>\nHi<|end|>\n<|assistant|>")
    assert ids == [1, tok.token_id("<|user|>"), tok.token_id("▁Hi"), tok.token_id("<|end|>"),
                   tok.token_id("<|assistant|>")]


# --- end of generation ---------------------------------------------------------------------------

def test_eog_texts_become_control_and_stop():
    tok = bpe(["a", "<|im_end|>", "<|im_start|>"], [], types=[NORMAL, NORMAL, CONTROL],
              **{"tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.eos_token_ids": [2]})
    end = tok.token_id("<|im_end|>")
    assert end in tok.eog_ids and tok.is_control(end) and tok.eot_id == end
    assert tok.eog_ids == {0, end, 2}  # eos, the end-of-turn text, Ollama's extra stop ids
    assert tok.token_piece(end) == b"" and tok.token_piece(end, special=True) == b"<|im_end|>"


def test_gpt_oss_end_is_not_eog_when_return_and_call_exist():
    tok = bpe(["a", "<|return|>", "<|call|>", "<|end|>"], [], types=[NORMAL] + [CONTROL] * 3,
              **{"tokenizer.ggml.eos_token_id": 1})
    assert tok.eog_ids == {1, 2}


def test_gpt_oss_channel_markers_reach_the_output_as_text():
    # The harmony parser (pollama/template/harmony.py) reads these markers in the streamed text:
    # gpt-oss's GGUF types them control, which the stream would drop; <|call|> and <|return|> stop.
    marks = ["<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|return|>", "<|call|>"]
    tok = bpe(["a", "b", " ", *marks], [], types=[NORMAL] * 3 + [CONTROL] * len(marks),
              **{"tokenizer.ggml.eos_token_id": marks.index("<|return|>") + 3})
    ids = tok.encode("<|channel|>a<|end|><|start|>b<|channel|>a <|constrain|>b<|message|>a", add_special=False)
    decoder = tok.decoder()
    assert "".join(decoder.feed(i) for i in ids) + decoder.flush() == "<|channel|>a<|end|><|start|>b<|channel|>a <|constrain|>b<|message|>a"
    assert tok.eog_ids == {tok.token_id("<|return|>"), tok.token_id("<|call|>")}


# --- pre-tokenizers ------------------------------------------------------------------------------

def test_unknown_pre_tokenizer_falls_back_to_default(caplog):
    with caplog.at_level(logging.WARNING, logger="pollama.tokenizer"):
        tok = bpe(["a"], [], pre="no-such-pre")
    assert tok.pre.name == "default" and "no-such-pre" in caplog.text


@pytest.mark.parametrize("pre,text,words", [
    ("gpt-2", "Hello world123 's", ["Hello", " world", "123", " '", "s"]),
    ("llama-bpe", "abc 1234567\n\n x", ["abc", " ", "123", "456", "7", "\n\n", " x"]),
    ("qwen2", "x 2024!", ["x", " ", "2", "0", "2", "4", "!"]),
    ("smollm", "x 2024!", ["x", " ", "2", "0", "2", "4", "!"]),
    ("deepseek-coder", "ab 你好12", ["ab", " ", "你好", "1", "2"]),
    ("deepseek-llm", "Ab 12 你好\n", ["Ab", " ", "12", " ", "你好", "\n"]),
    ("default", "a~b 1234", ["a", "~", "b", " ", "123", "4"]),
])
def test_pre_tokenizer_splits(pre, text, words):
    assert splitter(PRE_TOKENIZERS[pre].regexes).split(text) == words


def test_every_pre_tokenizer_covers_its_input():
    """Whatever the text, the words of every pre-tokenizer concatenate back to it."""
    rng = random.Random(1234)
    alphabet = "aZ09 \t\n\r'.,!?~$€—–ßéñ中文한국어ひらがなﾊ١٢٣ \u3000\u00a0\u2028🦙😀\u0301\x00\x1f"
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(150)]
    for name, pre in PRE_TOKENIZERS.items():
        split = splitter(pre.regexes).split
        for s in samples:
            words = split(s)
            assert "".join(words) == s and all(words), (name, s, words)


# --- errors --------------------------------------------------------------------------------------

def test_unsupported_or_missing_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.model 't5'"):
        load_tokenizer({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="no tokenizer.ggml.tokens"):
        load_tokenizer({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="merges"):
        load_tokenizer({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
