"""Tokenizers configured from GGUF metadata: byte-level BPE, SentencePiece and WordPiece, exact with llama.cpp.

    tok = load_tokenizer(gguf_metadata)
    ids = tok.encode("Hello", add_special=True, parse_special=True)   # llama_tokenize
    text = tok.decode(ids)                                            # pieces joined, as streamed
    stream = tok.decoder(); chunks = [stream.feed(i) for i in ids] + [stream.flush()]
"""

from .tokenizer import StreamDecoder, Tokenizer, load_tokenizer

__all__ = ["StreamDecoder", "Tokenizer", "load_tokenizer"]
