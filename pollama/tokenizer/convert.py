"""A Hugging Face tokenizer folder -> GGUF tokenizer.ggml.* metadata, as llama.cpp's converter writes it.

Three kinds are converted:
- byte-level BPE from tokenizer.json -> tokenizer.ggml.model "gpt2", with tokenizer.ggml.pre
  naming the pre-tokenizer our BPE tokenizer must run to split text as the HF one does;
- SentencePiece-style BPE from tokenizer.json (byte fallback, spaces as "\u2581": Gemma 4's
  GemmaTokenizer) -> "gemma4", the one llama.cpp tokenizer type that reads it (for the
  architectures whose converters ask: Gemma 4);
- SentencePiece (BPE type) from tokenizer.model -> "llama", pieces with their scores and types.
tokenizer.model wins when both are present, as in llama.cpp and Ollama (Gemma ships both).

Neither `tokenizers` nor `sentencepiece` is needed: tokenizer.json is plain JSON, and the
few fields of SentencePiece's protobuf that matter are read by a small wire-format reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# tokenizer.ggml.token_type values (same numbers as SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The Split regex of a tokenizer.json pre-tokenizer -> llama.cpp's name for the same split.
# (Ollama keys the same table by the sha256 of the regexes; these strings give its digests.)
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
PRE_BY_SPLIT_REGEX = {
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen35",
    # Mistral's Tekken (Mistral Small 3.x, Ministral, Pixtral), as llama.cpp names it.
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "tekken",
    # OpenAI's o200k (gpt-oss's o200k_harmony), as llama.cpp names it.
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
    + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
    + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "gpt-4o",
}
# Pre-tokenizers of several Split steps, known by the sha256 of their concatenated regexes (Ollama's).
PRE_BY_SPLIT_DIGEST = {
    "03df5c5863ad70781dcfdef491ead25140f895fe8010964be0daefe27be32b02": "deepseek-llm",
    "21cde974d587f0d54dc8d56b183cc1e6239600172035c68fbd6d4b9f8da0576e": "deepseek-coder",
}


class TokenizerConvertError(ValueError):
    """The tokenizer files of a folder are missing, malformed or of a kind we cannot convert."""


def convert_tokenizer(folder: str | Path, vocab_size: int | None = None, config: dict | None = None,
                      sentencepiece_bpe: bool = False) -> dict[str, Any]:
    """tokenizer.ggml.* (and tokenizer.chat_template) keys for a HF folder, the vocabulary padded to vocab_size.

    `sentencepiece_bpe`: a SentencePiece-style tokenizer.json is written as llama.cpp's "gemma4"
    vocabulary (its architecture's readers know it); otherwise such a folder needs tokenizer.model."""
    folder = Path(folder)
    config = config or {}
    tok_config = _read_json(folder / "tokenizer_config.json") or {}
    if (folder / "tokenizer.model").is_file():
        md, add_bos, add_eos = _sentencepiece(folder, tok_config, vocab_size)
    elif (folder / "tokenizer.json").is_file():
        try:
            tj = _read_json(folder / "tokenizer.json")
            md, add_bos, add_eos = _bpe(tj, tok_config, vocab_size, sentencepiece_bpe)
        except (KeyError, TypeError, AttributeError) as e:
            raise TokenizerConvertError(f"{folder / 'tokenizer.json'}: malformed ({type(e).__name__}: {e})") from None
    else:
        raise TokenizerConvertError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model) in the folder")

    tokens = md["tokenizer.ggml.tokens"]
    text_to_id: dict[str, int] = {}
    for i, t in enumerate(tokens):
        text_to_id.setdefault(t, i)
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        i = _special_id(name, tok_config, config, text_to_id, len(tokens))
        if i is not None:
            md[f"tokenizer.ggml.{key}"] = i
    # tokenizer_config's explicit flags win over what the post-processor implies.
    md["tokenizer.ggml.add_bos_token"] = bool(tok_config.get("add_bos_token", add_bos))
    md["tokenizer.ggml.add_eos_token"] = bool(tok_config.get("add_eos_token", add_eos))

    # generation_config.json may name more end-of-generation ids (Llama 3: <|eot_id|>, <|eom_id|>).
    gen = _read_json(folder / "generation_config.json") or {}
    stop = gen.get("eos_token_id")
    stop = [stop] if isinstance(stop, int) else stop
    valid = isinstance(stop, list) and all(isinstance(i, int) and 0 <= i < len(tokens) for i in stop)
    if valid and set(stop) - {md.get("tokenizer.ggml.eos_token_id")}:
        md["tokenizer.ggml.eos_token_ids"] = list(stop)

    template = _chat_template(folder, tok_config)
    if template:
        md["tokenizer.chat_template"] = template
    return md


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerConvertError(f"{path}: not valid JSON ({e})") from None


def _token_text(entry: Any) -> str | None:
    """A special token as tokenizer_config writes it: a string, or {"content": ...}."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    return entry if isinstance(entry, str) else None


def _special_id(name: str, tok_config: dict, config: dict, text_to_id: dict[str, int], n: int) -> int | None:
    """tokenizer_config's `<name>_token` looked up in the vocabulary, else config.json's `<name>_token_id`."""
    text = _token_text(tok_config.get(f"{name}_token"))
    if text is not None and text in text_to_id:
        return text_to_id[text]
    i = config.get(f"{name}_token_id")
    if isinstance(i, list):  # some configs list several eos ids: the first is the eos token
        i = i[0] if i else None
    return i if isinstance(i, int) and 0 <= i < n else None


def _chat_template(folder: Path, tok_config: dict) -> str | None:
    # transformers 5 saves the template beside the tokenizer; older folders keep it in the config.
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


# --- byte-level BPE (tokenizer.json) -------------------------------------------------------------

def _bpe(tj: Any, tok_config: dict, vocab_size: int | None,
         sentencepiece_bpe: bool = False) -> tuple[dict[str, Any], bool, bool]:
    if not isinstance(tj, dict):
        raise TokenizerConvertError("tokenizer.json is not a JSON object")
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerConvertError(f"tokenizer.json holds a {model.get('type')!r} model; only BPE is supported")
    spm_style = not _steps(tj.get("pre_tokenizer"), "ByteLevel")
    if spm_style and not (sentencepiece_bpe and model.get("byte_fallback") and _replaces_spaces(tj.get("normalizer"))):
        # A BPE over SentencePiece-style text (byte fallback, "\u2581" for spaces) needs
        # tokenizer.model, unless the architecture's readers take llama.cpp's "gemma4" vocabulary.
        raise TokenizerConvertError("tokenizer.json is not a byte-level BPE; a tokenizer.model is needed")
    vocab: dict[str, int] = model.get("vocab") or {}
    # SentencePiece-style: <0xXX> pieces are the byte fallback (llama.cpp's LlamaHfVocab types them so).
    by_id: dict[int, tuple[str, int]] = {
        i: (t, BYTE if spm_style and _BYTE_PIECE.fullmatch(t) else NORMAL) for t, i in vocab.items()}
    for added in tj.get("added_tokens") or []:
        # Added tokens are matched in raw text, so their text is stored as is (not byte-mapped).
        text = added["content"]
        special = added.get("special") or _looks_special(text)
        by_id[added["id"]] = (text, CONTROL if special else USER_DEFINED)
    n = _vocab_length(by_id, vocab_size)
    tokens, types = [], []
    for i in range(n):
        # Holes up to the embedding's row count: unused, so text can never turn into them.
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    md = {"tokenizer.ggml.model": "gemma4"} if spm_style else {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre_tokenizer_name(tj, tok_config)}
    md.update({
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    })
    if spm_style:
        md["tokenizer.ggml.add_space_prefix"] = False
    add_bos, add_eos = _template_flags(tj.get("post_processor"))
    return md, add_bos, add_eos


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _replaces_spaces(normalizer: Any) -> bool:
    """Whether a tokenizer.json normalizer writes spaces as SentencePiece's "\u2581"."""
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Sequence":
        return any(_replaces_spaces(n) for n in normalizer.get("normalizers") or [])
    pattern = normalizer.get("pattern") or {}
    return (normalizer.get("type") == "Replace" and pattern.get("String") == " "
            and normalizer.get("content") == "\u2581")


def _looks_special(text: str) -> bool:
    # llama.cpp's guess for added tokens that HF does not flag special.
    return (text in ("<pad>", "<mask>") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _vocab_length(by_id: dict[int, Any], vocab_size: int | None) -> int:
    n = max(by_id, default=-1) + 1
    if vocab_size is None:
        return n
    if n > vocab_size:
        # Tokens past the embedding rows cannot be fed to the model (e.g. image placeholders).
        log.warning("tokenizer has %d tokens, the model %d: dropping ids %d..", n, vocab_size, vocab_size)
    return vocab_size


def _steps(node: Any, kind: str) -> list[dict]:
    """The pre-tokenizer steps of one type, looking inside Sequence steps."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [s for sub in node.get("pretokenizers") or node.get("processors") or [] for s in _steps(sub, kind)]
    return [node] if node.get("type") == kind else []


def pre_tokenizer_name(tj: dict, tok_config: dict | None = None) -> str:
    """llama.cpp's tokenizer.ggml.pre for a tokenizer.json's pre-tokenizer."""
    node = tj.get("pre_tokenizer")
    splits = _steps(node, "Split")
    if splits:
        regex = "".join((s.get("pattern") or {}).get("Regex", "") for s in splits)
        name = PRE_BY_SPLIT_REGEX.get(regex) or PRE_BY_SPLIT_DIGEST.get(hashlib.sha256(regex.encode()).hexdigest())
        if name is None:
            log.warning("unknown pre-tokenizer regex %r: using 'default'; tokens may differ from HF", regex)
            return "default"
        return name
    byte_level = _steps(node, "ByteLevel")
    if byte_level and byte_level[0].get("use_regex", True):
        digits = _steps(node, "Digits")
        if digits and digits[0].get("individual_digits"):
            # SmolLM and StarCoder split alike; llama.cpp names them apart by the space clean-up.
            cleanup = bool((tok_config or {}).get("clean_up_tokenization_spaces", False))
            return "starcoder" if cleanup else "smollm"
        if not digits:
            return "gpt-2"  # GPT-2's own regex, built into the ByteLevel step
    log.warning("unrecognised pre-tokenizer %s: using 'default'; tokens may differ from HF", json.dumps(node))
    return "default"


def _template_flags(post: Any) -> tuple[bool, bool]:
    """(add_bos, add_eos): whether the post-processor's single-sequence template starts or ends with a special."""
    if not isinstance(post, dict):
        return False, False
    if post.get("type") == "Sequence":
        for sub in post.get("processors") or []:
            flags = _template_flags(sub)
            if any(flags):
                return flags
        return False, False
    if post.get("type") != "TemplateProcessing":
        return False, False
    single = post.get("single") or []
    first = single[0] if single else {}
    last = single[-1] if single else {}
    return "SpecialToken" in first, "SpecialToken" in last and len(single) > 1


# --- SentencePiece (tokenizer.model) -------------------------------------------------------------

def _sentencepiece(folder: Path, tok_config: dict, vocab_size: int | None) -> tuple[dict[str, Any], bool, bool]:
    path = folder / "tokenizer.model"
    try:
        pieces, model_type, add_dummy_prefix = read_sentencepiece(path.read_bytes())
    except (ValueError, IndexError, TypeError, struct.error) as e:
        raise TokenizerConvertError(f"{path}: not a SentencePiece model ({e})") from None
    if model_type != 2:
        # llama.cpp's "llama" tokenizer is SentencePiece's BPE; a unigram model would split differently.
        kind = {1: "unigram", 3: "word", 4: "char"}.get(model_type, model_type)
        raise TokenizerConvertError(f"{path}: a {kind} SentencePiece model; only BPE is supported")
    by_id = {i: (text, score, kind) for i, (text, score, kind) in enumerate(pieces)}

    # Tokens added on top of the SentencePiece model, as llama.cpp reads them.
    added = _read_json(folder / "added_tokens.json") or {}
    for text, i in added.items():
        if isinstance(i, int) and i not in by_id:
            by_id[i] = (text, -1000.0, USER_DEFINED)
    decoder = tok_config.get("added_tokens_decoder")
    for key, entry in (decoder if isinstance(decoder, dict) else {}).items():
        text = _token_text(entry)
        if text is None or not str(key).isdigit():
            continue
        i = int(key)
        score = by_id[i][1] if i in by_id else -1000.0
        # User-defined text is matched raw, so SentencePiece's visible space becomes a space again.
        special = isinstance(entry, dict) and entry.get("special")
        by_id[i] = (text, score, CONTROL) if special else (text.replace("\u2581", " "), score, USER_DEFINED)

    n = _vocab_length(by_id, vocab_size)
    tokens, scores, types = [], [], []
    for i in range(n):
        text, score, kind = by_id.get(i, (f"[PAD{i}]", -1000.0, UNUSED))
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": add_dummy_prefix,
    }
    return md, True, False  # HF's SentencePiece tokenizers add BOS unless told otherwise


def read_sentencepiece(data: bytes) -> tuple[list[tuple[str, float, int]], int, bool]:
    """(pieces as (text, score, type), model type, add_dummy_prefix) of a SentencePiece ModelProto."""
    pieces = []
    model_type, add_dummy_prefix = 1, True  # the proto's defaults: unigram, with a dummy prefix
    for field, value in _fields(data):
        if field == 1:  # SentencePiece piece = 1 { string piece = 1; float score = 2; Type type = 3; }
            text, score, kind = "", 0.0, NORMAL
            for f, v in _fields(value):
                if f == 1:
                    text = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            if kind == USER_DEFINED:
                kind = NORMAL  # as llama.cpp: only unknown/control/unused/byte keep their type
            pieces.append((text, score, kind))
        elif field == 2:  # TrainerSpec trainer_spec = 2 { ModelType model_type = 3; }
            for f, v in _fields(value):
                if f == 3:
                    model_type = v
        elif field == 3:  # NormalizerSpec normalizer_spec = 3 { bool add_dummy_prefix = 3; }
            for f, v in _fields(value):
                if f == 3:
                    add_dummy_prefix = bool(v)
    if not pieces:
        raise ValueError("no pieces")
    return pieces, model_type, add_dummy_prefix


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes):
    """(field number, value) of a protobuf message: ints for varints, bytes for the rest."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(data):
            raise ValueError("truncated message")
        yield field, value
