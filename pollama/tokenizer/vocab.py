"""The vocabulary of a GGUF model: tokens, their attributes, special ids, as llama.cpp loads them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import repeat
from typing import Any

log = logging.getLogger(__name__)

# GGUF tokenizer.ggml.token_type values (llama.h llama_token_type).
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# Token attribute bits (llama.h llama_token_attr). A token's type becomes one of these, and
# llama.cpp then ORs in extra bits (control for end-of-turn markers, lstrip/rstrip for some models).
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

_TYPE_TO_ATTR = {
    TYPE_UNDEFINED: ATTR_UNDEFINED,
    TYPE_NORMAL: ATTR_NORMAL,
    TYPE_UNKNOWN: ATTR_UNKNOWN,
    TYPE_CONTROL: ATTR_CONTROL,
    TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TYPE_UNUSED: ATTR_UNUSED,
    TYPE_BYTE: ATTR_BYTE,
}

# Texts by which llama.cpp recognises end-of-turn / end-of-generation tokens that the GGUF does
# not name in a key (llama_vocab::impl::load). They are marked control and stop generation.
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)
# Other ids llama.cpp finds by text when the GGUF has no key for them.
_DETECTED_TEXTS = {
    "eot": _EOT_TEXTS,
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# Defaults per tokenizer family, before the GGUF keys override them (llama.cpp load()).
_DEFAULT_IDS = {
    "spm": {"bos": 1, "eos": 2, "unk": 0, "sep": None, "pad": None, "mask": None},
    "wpm": {"bos": 101, "eos": None, "unk": 100, "sep": 102, "pad": 0, "mask": 103},
    "bpe": {"bos": 11, "eos": 11, "unk": None, "sep": None, "pad": None, "mask": None},
    "gemma4": {"bos": None, "eos": None, "unk": None, "sep": None, "pad": None, "mask": None},
}
_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling of the key
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id",
    "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id",
    "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id",
    "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}


class Vocab:
    """Token texts, scores and attributes plus the special ids and flags of one GGUF vocabulary."""

    def __init__(self, metadata: Mapping[str, Any], kind: str, flags: dict[str, bool], no_default_bos: bool = False):
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            raise ValueError("GGUF has no tokenizer.ggml.tokens: the model carries no vocabulary")
        n = len(tokens)
        self.kind = kind
        self.tokens: list[str] = list(tokens)
        scores = metadata.get("tokenizer.ggml.scores")
        self.scores: list[float] = list(scores) if scores is not None else [0.0] * n
        types = metadata.get("tokenizer.ggml.token_type")
        if (scores is not None and len(self.scores) < n) or (types is not None and len(types) < n):
            raise ValueError("GGUF tokenizer arrays are shorter than tokenizer.ggml.tokens")
        if types is None:
            self.attrs = [ATTR_NORMAL] * n
        else:
            self.attrs = list(map(_TYPE_TO_ATTR.get, types[:n], repeat(ATTR_UNDEFINED)))

        # text -> id; with duplicates the first id wins (llama.cpp refuses such files outright).
        # Built from the end so that earlier ids overwrite later ones, in one C-level pass.
        self.token_to_id: dict[str, int] = dict(zip(reversed(self.tokens), range(n - 1, -1, -1), strict=True))
        if "" in self.token_to_id:
            # llama.cpp names empty tokens so that they can never match text
            for i, t in enumerate(self.tokens):
                if not t:
                    self.tokens[i] = f"[EMPTY_{i}]"
            self.token_to_id = dict(zip(reversed(self.tokens), range(n - 1, -1, -1), strict=True))
        if len(self.token_to_id) != n:
            log.warning("vocabulary has %d duplicate token texts", n - len(self.token_to_id))

        self.add_space_prefix = flags["add_space_prefix"]
        self.add_bos = flags["add_bos"]
        self.add_eos = flags["add_eos"]
        self.add_sep = flags["add_sep"]
        self._load_special_ids(metadata, no_default_bos)
        self._mark_special_attrs(metadata)
        special = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
        self.special_ids: list[int] = [i for i, a in enumerate(self.attrs) if a & special]
        # longest first, as llama.cpp splits them out of text; ties by id for determinism
        self.special_ids.sort(key=lambda i: (-len(self.tokens[i]), i))
        self._apply_strip_rules(metadata)

    def _load_special_ids(self, md: Mapping[str, Any], no_default_bos: bool) -> None:
        n = len(self.tokens)
        ids: dict[str, int | None] = dict.fromkeys(_ID_KEYS)
        ids.update(_DEFAULT_IDS[self.kind])
        if no_default_bos:
            ids["bos"] = None
        for name, key in _ID_KEYS.items():
            if ids[name] is not None and ids[name] >= n:
                ids[name] = None  # a default outside a small vocab is no token at all
            value = md.get(key)
            if value is None:
                continue
            if 0 <= int(value) < n:
                ids[name] = int(value)
            else:
                log.warning("%s = %s is outside the vocabulary; ignored", key, value)
        if self.kind == "wpm" and md.get("tokenizer.ggml.bos_token_id") is None:
            cls = md.get("tokenizer.ggml.cls_token_id")  # BERT converters write [CLS] here
            if cls is not None and 0 <= int(cls) < n:
                ids["bos"] = int(cls)
        self.ids = ids
        for flag, name in (("add_bos", "bos"), ("add_eos", "eos"), ("add_sep", "sep")):
            if getattr(self, flag) and ids[name] is None:
                raise ValueError(f"tokenizer.ggml.{flag}_token is true but the vocabulary has no {name} token")

    def _find(self, texts: tuple[str, ...]) -> int | None:
        for t in texts:
            i = self.token_to_id.get(t)
            if i is not None:
                return i
        return None

    def _make_control(self, i: int) -> None:
        # llama.cpp: "control-looking token was not control-type; its type will be overridden"
        self.attrs[i] |= ATTR_CONTROL

    def _mark_special_attrs(self, md: Mapping[str, Any]) -> None:
        """Find end-of-turn, FIM and end-of-generation tokens by text and build the EOG set."""
        ids = self.ids
        for name, texts in _DETECTED_TEXTS.items():
            if ids[name] is None:
                ids[name] = self._find(texts)
                if ids[name] is not None:
                    self._make_control(ids[name])

        # Control tokens named like "<unused12>" are unused slots.
        for i in [i for i, a in enumerate(self.attrs) if a & ATTR_CONTROL]:
            if "unused" in self.tokens[i]:
                self.attrs[i] |= ATTR_UNUSED

        eog: set[int] = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] is not None}
        for t in _EOG_TEXTS:
            i = self.token_to_id.get(t)
            if i is not None:
                eog.add(i)
                self._make_control(i)
        # gpt-oss renders these channel markers even when special tokens are hidden.
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            i = self.token_to_id.get(t)
            if i is not None:
                self.attrs[i] = ATTR_USER_DEFINED
        for k in ("eos", "eot", "eom"):
            if ids[k] is not None:
                eog.add(ids[k])
        texts = {self.tokens[i] for i in eog}
        # gpt-oss / solar-open: "<|end|>" ends a message, not the generation.
        if ("<|return|>" in texts and "<|call|>" in texts or "<|calls|>" in texts and "<|flush|>" in texts) \
                and "<|end|>" in texts:
            end = self.token_to_id["<|end|>"]
            eog.discard(end)
            self.attrs[end] = ATTR_USER_DEFINED
        # gemma4: "</s>" is ordinary text there.
        if "<|tool_response>" in texts and "</s>" in texts:
            s = self.token_to_id["</s>"]
            eog.discard(s)
            self.attrs[s] = ATTR_NORMAL
        # Ollama's extra stop ids.
        for i in md.get("tokenizer.ggml.eos_token_ids") or ():
            if 0 <= int(i) < len(self.tokens):
                eog.add(int(i))
        self.eog_ids = frozenset(eog)

    def _apply_strip_rules(self, md: Mapping[str, Any]) -> None:
        """Per-model lstrip/rstrip of the text around special tokens (llama.cpp's name-based rules)."""
        name = str(md.get("general.name") or "").lower()
        pre = str(md.get("tokenizer.ggml.pre") or "")
        arch = str(md.get("general.architecture") or "")
        tid = self.token_to_id.get
        if any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(a in arch for a in ("nomic-bert-moe", "jina-bert-v3")):
            if tid("<mask>") is not None:
                self.attrs[tid("<mask>")] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self.special_ids:
                self.attrs[i] |= ATTR_RSTRIP
            if tid("</s>") is not None:
                self.attrs[tid("</s>")] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if tid(t) is not None:
                    self.attrs[tid(t)] &= ~ATTR_RSTRIP
        elif "modern-bert" in name and tid("[MASK]") is not None:
            self.attrs[tid("[MASK]")] |= ATTR_LSTRIP
