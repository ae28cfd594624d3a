"""Decoding: token pieces, streaming without broken characters, and llama.cpp's detokenize."""

from __future__ import annotations

import pytest

MULTIBYTE = "🦙 llamas 中文字符 😀👍🏽 ñandú — 한국어 ありがとう 🇫🇷!"


def _splits_characters(tok, ids) -> bool:
    """Whether some token's bytes are not whole UTF-8 characters (the case streaming must handle)."""
    for i in ids:
        try:
            tok.token_piece(i).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "qwen2"])
def test_stream_decoder_never_emits_broken_characters(vocab, name):
    """Byte-fallback tokens (SentencePiece) and byte-level BPE tokens split characters; the
    stream holds partial bytes back, and its text adds up to decode(all)."""
    tok = vocab(name)
    ids = tok.encode(MULTIBYTE, add_special=False)
    assert _splits_characters(tok, ids), "the sample must split characters across tokens"
    stream = tok.decoder()
    chunks = [stream.feed(i) for i in ids]
    assert all("\ufffd" not in c for c in chunks)
    assert "" in chunks  # some token completed no character and was held back
    assert "".join(chunks) + stream.flush() == tok.decode(ids)
    assert tok.decode(ids).lstrip(" ") == MULTIBYTE


def test_stream_decoder_flushes_an_unfinished_character(vocab):
    tok = vocab("llama-spm")
    ids = tok.encode("🦙", add_special=False)  # "▁" then four byte tokens
    stream = tok.decoder()
    text = "".join(stream.feed(i) for i in ids[:-1])
    assert text == " "
    assert stream.flush() == "\ufffd"


def test_token_pieces(vocab):
    spm = vocab("llama-spm")
    assert spm.token_piece(spm.token_id("<0x0A>")) == b"\n"
    assert spm.token_piece(spm.token_id("▁Hello")) == b" Hello"
    assert spm.token_piece(spm.bos_id) == b"" and spm.token_piece(spm.bos_id, special=True) == b"<s>"
    gpt2 = vocab("gpt-2")
    assert gpt2.token_piece(gpt2.token_id("Ġworld")) == b" world"
    assert gpt2.token_piece(gpt2.token_id("Ċ")) == b"\n"
    end = gpt2.token_id("<|endoftext|>")
    assert gpt2.decode([end]) == "" and gpt2.decode([end], special=True) == "<|endoftext|>"


def test_detokenize_cleans_spaces_like_llamacpp(vocab):
    """llama_detokenize removes spaces before , . ! ? and in ' s contractions for most BPE
    vocabularies, but not for those whose pre-tokenizer turns that off (qwen2)."""
    text = "Hello , world ! It ' s ok . I 'm here , 're you ? ' ' x"
    gpt2 = vocab("gpt-2")
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert gpt2.detokenize(ids) == "Hello, world! It's ok. I'm here,'re you?'' x"
    qwen = vocab("qwen2")
    assert qwen.detokenize(qwen.encode(text)) == text


def test_detokenize_drops_the_dummy_prefix_once(vocab):
    tok = vocab("llama-spm")
    ids = tok.encode(" Hello world", add_special=False)
    assert tok.decode(ids) == "  Hello world"
    assert tok.detokenize(ids) == " Hello world"
    with_bos = tok.encode("Hello", add_special=True)
    assert tok.detokenize(with_bos) == " Hello"  # BOS (empty) takes the strip, as in llama.cpp
    assert tok.detokenize(with_bos, remove_special=True) == " Hello"


def test_ids_outside_the_vocabulary_are_a_clear_error(vocab):
    tok = vocab("gpt-2")
    for bad in (-1, tok.vocab_size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([bad])
