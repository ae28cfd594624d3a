"""HF BertModel (safetensors or PyTorch checkpoint) -> GGUF, as llama.cpp's and Ollama's converters lay it out.

Tensors take llama.cpp's BERT names (token_embd, blk.N.attn_q, ...); the pooler and any
masked-LM head are dropped (sentence embeddings do not use them). The WordPiece vocabulary is
stored the way llama.cpp's tokenizer reads it (and as its ggml-vocab-bert-bge.gguf holds it): a
word-initial piece "x" as "▁x", a continuation "##x" as "x", bracketed specials ("[CLS]",
"[unused0]") unchanged. A sentence-transformers folder says how to pool (1_Pooling/config.json)
and whether it normalizes (a Normalize module), which become bert.pooling_type and Ollama's
bert.normalize_embeddings.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFValueType
from pollama.fs.writer import LazyTensor, write_gguf
from pollama.models.bert.model import Pooling
from pollama.models.checkpoint import open_weights
from pollama.models.convert import ConvertError, ModelConverter

# GGUF token types (llama.h)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# HF module path inside a layer (or under embeddings) -> GGUF name.
_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_EMBEDDING_NAMES = {
    "word_embeddings": "token_embd",
    "position_embeddings": "position_embd",
    "token_type_embeddings": "token_types",
    "LayerNorm": "token_embd_norm",
}
_PARAMS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}  # old checkpoints: gamma/beta
_SKIPPED = re.compile(r"(embeddings\.position_ids|pooler\..*|cls\..*)")
_POOLING_NAMES = {"none": Pooling.NONE, "mean": Pooling.MEAN, "cls": Pooling.CLS, "last": Pooling.LAST}
_SPECIALS = {"cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "pad": "[PAD]", "mask": "[MASK]"}
_ID_KEYS = {
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "cls": "tokenizer.ggml.cls_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read JSON ({e})") from None


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name for an HF BertModel tensor; None for one that is dropped."""
    name = hf_name.removeprefix("bert.")
    if _SKIPPED.fullmatch(name):
        return None
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(\w+)", name)
    if m and m[2] in _LAYER_NAMES and m[3] in _PARAMS:
        return f"blk.{int(m[1])}.{_LAYER_NAMES[m[2]]}.{_PARAMS[m[3]]}"
    m = re.fullmatch(r"embeddings\.(\w+)\.(\w+)", name)
    if m and m[1] in _EMBEDDING_NAMES and m[2] in _PARAMS:
        return f"{_EMBEDDING_NAMES[m[1]]}.{_PARAMS[m[2]]}"
    raise ConvertError(f"unexpected tensor {hf_name!r} in a BertModel checkpoint")


def read_pooling(hf_dir: Path) -> tuple[Pooling, bool]:
    """(pooling, normalize) from a sentence-transformers modules.json; (NONE, False) without one."""
    modules_path = hf_dir / "modules.json"
    if not modules_path.is_file():
        return Pooling.NONE, False
    pooling, normalize = Pooling.NONE, False
    for module in _read_json(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = _read_json(hf_dir / module.get("path", "") / "config.json")
            modes = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            by_mode = {"mean_tokens": Pooling.MEAN, "cls_token": Pooling.CLS, "lasttoken": Pooling.LAST}
            if len(modes) != 1 or modes[0] not in by_mode:
                raise ConvertError(f"{hf_dir}: unsupported sentence-transformers pooling {modes} (mean, cls or last)")
            pooling = by_mode[modes[0]]
        elif kind == "Normalize":
            normalize = True
        elif kind not in ("Transformer", "Pooling"):
            # A Dense or other module changes the vectors; leaving it out would be silently wrong.
            raise ConvertError(f"{hf_dir}: sentence-transformers module {module.get('type')!r} is not supported")
    return pooling, normalize


@dataclass
class WordPieceVocab:
    """A vocabulary as the GGUF stores it."""

    tokens: list[str]  # phantom-space form
    types: list[int]
    ids: dict[str, int]  # cls, sep, unk, pad, mask -> id
    lowercase: bool
    strip_accents: bool | None  # None: as lowercase


def read_vocab(hf_dir: Path) -> WordPieceVocab:
    """WordPiece tokens, types, special ids and casing from tokenizer.json (or vocab.txt)."""
    tok_json = hf_dir / "tokenizer.json"
    config_path = hf_dir / "tokenizer_config.json"
    tok_config = _read_json(config_path) if config_path.is_file() else {}
    special_kinds: dict[int, int] = {}
    if tok_json.is_file():
        tj = _read_json(tok_json)
        model = tj.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ConvertError(f"{tok_json}: a {model.get('type')} tokenizer, not WordPiece")
        prefix = model.get("continuing_subword_prefix", "##")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise ConvertError(f"{tok_json}: the WordPiece model has no vocabulary")
        for added in tj.get("added_tokens") or []:
            vocab.setdefault(added["content"], added["id"])
            special_kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
        normalizer = _find_bert_normalizer(tj.get("normalizer"))
        lowercase = bool(normalizer.get("lowercase", True))
        strip_accents = normalizer.get("strip_accents")
    else:
        vocab_txt = hf_dir / "vocab.txt"
        if not vocab_txt.is_file():
            raise ConvertError(f"{hf_dir}: no tokenizer.json or vocab.txt")
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        vocab = {t: i for i, t in reversed(list(enumerate(lines)))}
        prefix = "##"
        lowercase = bool(tok_config.get("do_lower_case", True))
        strip_accents = tok_config.get("strip_accents")

    n = max(vocab.values()) + 1
    tokens: list[str | None] = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    if None in tokens:
        raise ConvertError(f"{hf_dir}: the vocabulary has no token with id {tokens.index(None)}")

    ids = {}
    for kind, default in _SPECIALS.items():
        text = tok_config.get(f"{kind}_token", default)
        text = text.get("content") if isinstance(text, dict) else text
        if text in vocab:
            ids[kind] = vocab[text]
            special_kinds.setdefault(vocab[text], CONTROL)
    if "cls" not in ids or "sep" not in ids:
        raise ConvertError(f"{hf_dir}: the vocabulary lacks [CLS] or [SEP]")

    types = [special_kinds.get(i, NORMAL) for i in range(n)]
    # Phantom-space form, as llama.cpp's WordPiece looks pieces up.
    stored = [t if types[i] != NORMAL or (t.startswith("[") and t.endswith("]"))
              else t[len(prefix):] if t.startswith(prefix) else "\u2581" + t
              for i, t in enumerate(tokens)]
    return WordPieceVocab(stored, types, ids, lowercase, strip_accents)


def _find_bert_normalizer(normalizer: dict | None) -> dict:
    if not normalizer:
        return {}
    if normalizer.get("type") == "Sequence":
        for n in normalizer.get("normalizers") or []:
            found = _find_bert_normalizer(n)
            if found:
                return found
        return {}
    return normalizer if normalizer.get("type") == "BertNormalizer" else {}


def convert(hf_dir: str | Path, out_path: str | Path, *, outtype: str = "f16", pooling: str | None = None) -> None:
    """Write the GGUF of an HF BertModel folder: 2-D weights in `outtype` (f16 or f32), 1-D in F32.

    `pooling` (none, mean, cls, last) overrides what a sentence-transformers folder says.
    """
    hf_dir = Path(hf_dir)
    if outtype not in ("f16", "f32"):
        raise ConvertError(f"unsupported output type {outtype!r} (f16 or f32)")
    cfg = _read_json(hf_dir / "config.json")
    if "BertModel" not in (cfg.get("architectures") or []):
        raise ConvertError(f"{hf_dir}: config.json architectures {cfg.get('architectures')} is not BertModel")
    # The model computes the exact (erf) GELU, which is what HF's "gelu" means.
    if cfg.get("hidden_act", "gelu") not in ("gelu", "gelu_python"):
        raise ConvertError(f"{hf_dir}: hidden_act {cfg['hidden_act']!r} is not supported (only gelu)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConvertError(f"{hf_dir}: position_embedding_type {cfg['position_embedding_type']!r} is not supported")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads") if k not in cfg]
    if missing:
        raise ConvertError(f"{hf_dir}: config.json lacks {missing[0]!r}")
    n_layers = int(cfg["num_hidden_layers"])

    pool, normalize = read_pooling(hf_dir)
    if pooling is not None:
        if pooling not in _POOLING_NAMES:
            raise ConvertError(f"unknown pooling {pooling!r} ({', '.join(_POOLING_NAMES)})")
        pool = _POOLING_NAMES[pooling]
    vocab = read_vocab(hf_dir)

    wide = GGMLType.F16 if outtype == "f16" else GGMLType.F32
    tensors = []
    with open_weights(hf_dir) as st:
        for hf_name in st:
            name = gguf_name(hf_name)
            if name is None:
                continue
            if st.dtype(hf_name) not in ("F32", "F16", "BF16"):
                raise ConvertError(f"{hf_dir}: tensor {hf_name!r} has dtype {st.dtype(hf_name)}; "
                                   "only F32, F16 and BF16 weights are supported")
            shape = tuple(st[hf_name].shape)
            # Read when the writer reaches it, and its source pages dropped once written.
            data = LazyTensor(lambda n=hf_name: st[n].numpy(), lambda n=hf_name: st.release(n))
            tensors.append((name, data, wide if len(shape) >= 2 else GGMLType.F32, shape))
        shapes = {name: shape for name, _, _, shape in tensors}
        expected = {"token_embd.weight", "position_embd.weight", "token_types.weight",
                    "token_embd_norm.weight", "token_embd_norm.bias"}
        expected |= {f"blk.{i}.{n}.{p}" for i in range(n_layers) for n in _LAYER_NAMES.values() for p in ("weight", "bias")}
        missing, extra = sorted(expected - shapes.keys()), sorted(shapes.keys() - expected)
        if missing:
            raise ConvertError(f"{hf_dir}: tensor {missing[0]!r} is missing")
        if extra:
            raise ConvertError(f"{hf_dir}: unexpected tensor {extra[0]!r} (num_hidden_layers is {n_layers})")

        n_vocab = shapes["token_embd.weight"][0]
        tokens, types = vocab.tokens, vocab.types
        if len(tokens) > n_vocab:
            raise ConvertError(f"{hf_dir}: {len(tokens)} tokens but token_embd has {n_vocab} rows")
        # Rows without a token get placeholders, as llama.cpp pads a vocabulary.
        tokens = tokens + [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
        types = types + [UNUSED] * (n_vocab - len(types))

        metadata: dict[str, Any] = {
            "general.architecture": "bert",
            "general.name": Path(str(cfg.get("_name_or_path") or hf_dir.resolve().name)).name,
            "general.file_type": 1 if outtype == "f16" else 0,
            "general.quantization_version": 2,
            "general.parameter_count": sum(math.prod(shape) for shape in shapes.values()),
            "bert.block_count": n_layers,
            "bert.context_length": int(cfg.get("max_position_embeddings", 512)),
            "bert.embedding_length": int(cfg["hidden_size"]),
            "bert.feed_forward_length": int(cfg["intermediate_size"]),
            "bert.attention.head_count": int(cfg["num_attention_heads"]),
            "bert.attention.layer_norm_epsilon": float(cfg.get("layer_norm_eps", 1e-12)),
            "bert.attention.causal": False,
            "bert.pooling_type": int(pool),
            "bert.normalize_embeddings": normalize,
            "tokenizer.ggml.model": "bert",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.token_type_count": int(cfg.get("type_vocab_size", 2)),
            "tokenizer.ggml.normalizer.lowercase": vocab.lowercase,
        }
        if vocab.strip_accents is not None:  # unset: follows lowercase, as in HF
            metadata["tokenizer.ggml.normalizer.strip_accents"] = bool(vocab.strip_accents)
        for kind, i in vocab.ids.items():
            metadata[_ID_KEYS[kind]] = i
        # Integers as llama.cpp writes them (uint32), not the writer's default int32.
        u32 = {k: GGUFValueType.UINT32 for k, v in metadata.items() if type(v) is int}
        write_gguf(out_path, metadata, tensors, value_types=u32)


class BertConverter(ModelConverter):
    """BertModel folders: converted whole by convert() (WordPiece vocabulary, llama.cpp's BERT keys)."""

    arch = "bert"
    architectures = ("BertModel",)
    whole = staticmethod(convert)


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (BertConverter,)
