"""The Tokenizer: text <-> token ids for a GGUF model, matching llama.cpp's llama_tokenize/detokenize."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from typing import Any

from .bpe import BPEModel
from .pretokenize import UNICODE_TO_BYTE, pre_tokenizer
from .spm import SPMModel
from .vocab import (
    ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab,
)
from .wpm import WPMModel

_KINDS = {"gpt2": "bpe", "gemma4": "bpe", "llama": "spm", "bert": "wpm"}
_SPACE_ESCAPE = "\u2581"  # SentencePiece's visible space
_STRIP_CHARS = " \t\n\v\f\r"  # C isspace(), which llama.cpp uses around lstrip/rstrip tokens


# Architectures whose split Ollama's model code fixes, whatever tokenizer.ggml.pre its files say:
# gpt-oss (Ollama's `gptoss` files) always splits as o200k, llama.cpp's "gpt-4o".
_ARCH_PRE = {"gptoss": "gpt-4o"}


class Tokenizer:
    """Encodes and decodes text for one model vocabulary (BPE, SentencePiece or WordPiece)."""

    def __init__(self, metadata: Mapping[str, Any]):
        model = metadata.get("tokenizer.ggml.model")
        kind = _KINDS.get(model)
        if kind is None:
            raise ValueError(f"unsupported tokenizer.ggml.model {model!r} (supported: gpt2, gemma4, llama, bert)")
        self.model_name: str = model
        self.kind = kind
        # llama.cpp's "gemma4" vocabulary is BPE with its own pre-tokenizer, whatever the file names.
        pre = "gemma4" if model == "gemma4" else metadata.get("tokenizer.ggml.pre")
        pre = _ARCH_PRE.get(metadata.get("general.architecture"), pre)
        self.pre = pre_tokenizer(pre) if kind == "bpe" else None
        # Family defaults (llama.cpp load()), then the GGUF's own keys.
        if kind == "bpe":
            flags = dict(add_space_prefix=False, add_bos=self.pre.add_bos, add_eos=False, add_sep=self.pre.add_sep)
        else:
            flags = dict(add_space_prefix=kind == "spm", add_bos=True, add_eos=False, add_sep=kind == "wpm")
        for flag, key in (("add_space_prefix", "tokenizer.ggml.add_space_prefix"),
                          ("add_bos", "tokenizer.ggml.add_bos_token"), ("add_eos", "tokenizer.ggml.add_eos_token"),
                          ("add_sep", "tokenizer.ggml.add_sep_token")):
            if metadata.get(key) is not None:
                flags[flag] = bool(metadata[key])
        if self.pre is not None and self.pre.name == "gemma4":
            flags["add_bos"] = True  # llama.cpp overrides a file's false here (Gemma 4 needs its BOS)
        defaults = "gemma4" if model == "gemma4" else kind
        self.vocab = v = Vocab(metadata, defaults, flags, no_default_bos=bool(self.pre and self.pre.no_bos))
        self.clean_spaces = self.pre.clean_spaces if self.pre else kind == "wpm"

        if kind == "bpe":
            merges = metadata.get("tokenizer.ggml.merges")
            if merges is None:
                raise ValueError("BPE vocabulary without tokenizer.ggml.merges")
            self._model = BPEModel(v.token_to_id, merges, self.pre)
        elif kind == "spm":
            self._model = SPMModel(v.token_to_id, v.scores, v.ids["unk"])
        else:
            lowercase = bool(metadata.get("tokenizer.ggml.normalizer.lowercase", True))
            strip = bool(metadata.get("tokenizer.ggml.normalizer.strip_accents", lowercase))
            self._model = WPMModel(v.token_to_id, v.ids["unk"], lowercase, strip)

        self._pieces: dict[bool, list[bytes | None]] = {False: [None] * len(v.tokens), True: [None] * len(v.tokens)}
        self._special_index: dict[bool, tuple[dict[str, int], frozenset[str], dict[str, list[str]]]] = {}

    # --- properties others code against -------------------------------------------------------

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id ([CLS] for WordPiece), or None."""
        return self.vocab.ids["bos"]

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id, or None."""
        return self.vocab.ids["eos"]

    @property
    def eot_id(self) -> int | None:
        """End-of-turn id (e.g. <|im_end|>, <end_of_turn>), or None."""
        return self.vocab.ids["eot"]

    @property
    def unk_id(self) -> int | None:
        """Unknown-token id, or None."""
        return self.vocab.ids["unk"]

    @property
    def sep_id(self) -> int | None:
        """Separator id ([SEP] for WordPiece), or None."""
        return self.vocab.ids["sep"]

    @property
    def pad_id(self) -> int | None:
        """Padding id, or None."""
        return self.vocab.ids["pad"]

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end generation: eos, eot, eom, tokenizer.ggml.eos_token_ids and llama.cpp's EOG texts."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        """Whether encode(add_special=True) prepends BOS."""
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        """Whether encode(add_special=True) appends EOS."""
        return self.vocab.add_eos

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self.vocab.tokens)

    def is_special(self, token_id: int) -> bool:
        """Control, user-defined or unknown token (split out of text before tokenizing)."""
        return bool(self.vocab.attrs[token_id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))

    def is_control(self, token_id: int) -> bool:
        """Control or unknown token: rendered as nothing unless special=True."""
        return bool(self.vocab.attrs[token_id] & (ATTR_CONTROL | ATTR_UNKNOWN))

    def is_eog(self, token_id: int) -> bool:
        """Whether this id ends generation."""
        return token_id in self.vocab.eog_ids

    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the GGUF (e.g. 'Ġthe', '▁the', '<|im_end|>')."""
        return self.vocab.tokens[token_id]

    def token_id(self, text: str) -> int | None:
        """The id whose stored text is exactly `text`, or None."""
        return self.vocab.token_to_id.get(text)

    # --- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text` (llama_tokenize): add_special adds BOS/EOS as the model asks,
        parse_special turns control-token texts like <|im_end|> into their ids."""
        v = self.vocab
        if _has_surrogates(text):
            # llama.cpp reads bytes and turns each invalid UTF-8 byte into U+FFFD
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        fragments = self._partition(text, parse_special) if text else []
        out: list[int] = []
        encode = self._model.encode

        # add_bos/add_eos/add_sep imply their ids exist (Vocab checks); WordPiece always wraps
        # the text in [CLS] ... [SEP] when add_special is set, as llama.cpp does.
        if self.kind == "spm":
            if add_special and v.add_bos:
                out.append(v.ids["bos"])
            prev_special = True  # the first fragment gets the dummy prefix space
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if v.add_space_prefix and prev_special:
                    frag = " " + frag
                encode(frag.replace(" ", _SPACE_ESCAPE), out)
                prev_special = False
            if add_special and v.add_eos:
                out.append(v.ids["eos"])
        else:
            if add_special and (v.add_bos or self.kind == "wpm") and v.ids["bos"] is not None:
                out.append(v.ids["bos"])
            escape = self.pre is not None and self.pre.escape_spaces
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    encode(frag.replace(" ", _SPACE_ESCAPE) if escape else frag, out)
            if add_special:
                if self.kind == "wpm":
                    if v.ids["sep"] is not None:
                        out.append(v.ids["sep"])
                elif v.add_eos:
                    out.append(v.ids["eos"])
        return out

    def _specials(self, parse_special: bool) -> tuple[dict[str, int], frozenset[str], dict[str, list[str]]]:
        # text -> id of the specials that split text, every prefix of them, and the specials by
        # their first character
        index = self._special_index.get(parse_special)
        if index is None:
            v = self.vocab
            skip = 0 if parse_special else ATTR_CONTROL | ATTR_UNKNOWN  # user-defined always split
            by_text = {v.tokens[i]: i for i in reversed(v.special_ids) if not v.attrs[i] & skip}
            prefixes = frozenset(t[:k] for t in by_text for k in range(1, len(t) + 1))
            groups: dict[str, list[str]] = {}
            for t in by_text:
                groups.setdefault(t[0], []).append(t)
            index = self._special_index[parse_special] = (by_text, prefixes, groups)
        return index

    def _find_specials(self, text: str, parse_special: bool) -> set[str]:
        """The special texts that occur in `text`."""
        by_text, prefixes, groups = self._specials(parse_special)
        found: set[str] = set()
        for c in groups.keys() & set(text):
            group = groups[c]
            if len(group) <= 64:
                # few candidates (e.g. runs of spaces or newlines): let str search scan for each
                found.update(t for t in group if t in text)
                continue
            # many candidates (e.g. 6k "<unusedN>"): walk the prefixes from each place c occurs
            hits: set[str] = set()
            p = text.find(c)
            while p != -1 and len(hits) < len(group):
                k = p + 1
                while k <= len(text) and text[p:k] in prefixes:
                    if text[p:k] in by_text:
                        hits.add(text[p:k])
                    k += 1
                p = text.find(c, p + 1)
            found |= hits
        return found

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split out special tokens, longest first, as llama.cpp's tokenizer_st_partition does."""
        found = self._find_specials(text, parse_special)
        if not found:
            return [text]

        by_text = self._specials(parse_special)[0]
        attrs = self.vocab.attrs
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        for special in sorted(found, key=lambda t: (-len(t), by_text[t])):
            sid = by_text[special]
            lstrip, rstrip = attrs[sid] & ATTR_LSTRIP, attrs[sid] & ATTR_RSTRIP
            new: list[tuple[int, int] | int] = []
            for frag in frags:
                if isinstance(frag, int):
                    new.append(frag)
                    continue
                start, end = frag
                while start < end:
                    m = text.find(special, start, end)
                    if m == -1:
                        new.append((start, end))
                        break
                    left_end = m
                    if lstrip:
                        while left_end > start and text[left_end - 1] in _STRIP_CHARS:
                            left_end -= 1
                    if left_end > start:
                        new.append((start, left_end))
                    new.append(sid)
                    start = m + len(special)
                    if rstrip:
                        while start < end and text[start] in _STRIP_CHARS:
                            start += 1
            frags = new
        return [f if isinstance(f, int) else text[f[0]:f[1]] for f in frags]

    # --- decoding -----------------------------------------------------------------------------

    def token_piece(self, token_id: int, special: bool = False) -> bytes:
        """Raw bytes of one token as output shows it (llama_token_to_piece); control tokens give
        b"" unless special=True, and a byte token gives its single byte."""
        cache = self._pieces[special]
        if not 0 <= token_id < len(cache):
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{len(cache) - 1})")
        piece = cache[token_id]
        if piece is None:
            piece = cache[token_id] = self._piece(token_id, special)
        return piece

    def _piece(self, token_id: int, special: bool) -> bytes:
        v = self.vocab
        attr, text = v.attrs[token_id], v.tokens[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN) and not special:
            return b""
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return _to_bytes(text)
        if attr & ATTR_NORMAL:
            if self.kind == "bpe" and self.pre.byte_level:
                return _byte_decode(text)
            return _to_bytes(text.replace(_SPACE_ESCAPE, " "))
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens render as nothing

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of `ids`: the concatenation of their pieces (what streaming shows), invalid UTF-8
        replaced. Control tokens are dropped unless special=True."""
        return b"".join(self.token_piece(i, special) for i in ids).decode("utf-8", "replace")

    def detokenize(self, ids: list[int], special: bool = False, remove_special: bool = False) -> str:
        """llama_detokenize exactly: like decode(), but drops the space SentencePiece put before
        the first word and, for most BPE vocabularies, the space before , . ! ? and 's 'm 're 've."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and ids and ids[0] == v.ids["bos"]:
            remove_space = False
            ids = ids[1:]
        if remove_special and v.add_eos and ids and ids[-1] == v.ids["eos"]:
            ids = ids[:-1]
        buf = bytearray()
        for k, i in enumerate(ids):
            piece = self.token_piece(i, special)
            if k == 0 and remove_space and piece.startswith(b" "):
                piece = piece[1:]
            buf += piece
        if self.clean_spaces:
            buf = _clean_spaces(buf)
        return bytes(buf).decode("utf-8", "replace")

    def decoder(self, special: bool = False) -> StreamDecoder:
        """A StreamDecoder for token-by-token output."""
        return StreamDecoder(self, special)


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        """Text completed by this token (may be empty while a character is still incomplete)."""
        return self._utf8.decode(self._tokenizer.token_piece(token_id, self._special))

    def flush(self) -> str:
        """Whatever is held back, with an unfinished character shown as U+FFFD."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """Build the tokenizer a GGUF's metadata describes (tokenizer.ggml.* keys)."""
    return Tokenizer(metadata)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _to_bytes(text: str) -> bytes:
    # surrogateescape gives back token bytes that were not valid UTF-8 in the GGUF
    return text.encode("utf-8", "surrogateescape")


def _byte_decode(text: str) -> bytes:
    """Bytes of a byte-level BPE token; a character outside the byte map is shown as llama.cpp does."""
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in text)
    except KeyError:
        out = bytearray()
        for c in text:
            b = UNICODE_TO_BYTE.get(c)
            if b is not None:
                out.append(b)
            else:
                out += b"[UNK_BYTE_0x" + _to_bytes(c).hex().encode() + _to_bytes(text) + b"]"
        return bytes(out)


def _clean_spaces(text: bytearray) -> bytearray:
    """llama_detokenize's clean_up_tokenization_spaces passes, on bytes."""
    # 1: " ?" " !" " ." " ,"  ->  "?" "!" "." ","
    out = bytearray()
    for i, x in enumerate(text):
        if i > 0 and text[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    # 2: a lone apostrophe between spaces loses both spaces. llama.cpp blanks the dropped space
    # in place, so the character after it does not see a space before it.
    text, out, i = out, bytearray(), 0
    while i < len(text):
        x = text[i]
        if i > 0 and x == 0x27 and i + 1 < len(text) and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            out.pop()
            text[i + 1] = 0
            i += 1
        out.append(x)
        i += 1
    # 3: " 's" " 'm" " 're" " 've"  ->  "'s" "'m" "'re" "'ve"
    text, out = out, bytearray()
    for i, x in enumerate(text):
        if i > 0 and text[i - 1] == 0x20 and x == 0x27 and i + 1 < len(text):
            x1 = text[i + 1]
            x2 = text[i + 2] if i + 2 < len(text) else None
            if x1 in b"sm" or (x1, x2) in ((0x72, 0x65), (0x76, 0x65)):
                out.pop()
        out.append(x)
    return out
