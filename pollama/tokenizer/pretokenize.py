"""BPE pre-tokenizers chosen by tokenizer.ggml.pre, splitting text into words exactly as llama.cpp does.

llama.cpp runs each pre-tokenizer as a list of regexes applied one after the other: every regex
splits each piece left by the previous one into its matches and the gaps between them. Two
regexes (GPT-2's and Llama 3's) run through hand-written splitters with full Unicode classes;
here the `regex` module reproduces them, since llama.cpp's Unicode tables were generated with it.
Every other regex runs through C++ std::regex, which knows no Unicode classes, so llama.cpp first
"collapses" the text: each non-ASCII code point becomes one byte standing for its category
(letter, number, ...), and `\\p{L}` becomes `[<letter byte>A-Za-z]`. That has visible quirks
(`\\p{S}` misses `~`, `\\p{Lu}` means any letter), so those regexes are run here the same way,
on the collapsed text, with Python's `re` in ASCII mode (std::regex's `\\s` is ASCII-only too).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache

import regex

log = logging.getLogger(__name__)

# --- llama.cpp's regexes, in its (ECMAScript) syntax -------------------------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The code points listed by hand below are Unicode's cased letters (deepseek-llm's tokenizer.json).
DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
    "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943]+",
    "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
    "\\s+$",
    "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
    "\\p{N}+",
)
DEEPSEEK_CODER = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+", r"\p{N}")
DEEPSEEK3 = (
    r"\p{N}{1,3}",
    "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")
STARCODER = (r"\p{N}", GPT2)
PORO = (" ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+",)
VIKING = (" ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+", r"\p{N}")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+"
          r"((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
_CONTRACTION = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?((?=[\p{{L}}])([^a-z]))*((?=[\p{{L}}])([^A-Z]))+{_CONTRACTION}?"
         rf"|[^\r\n\p{{L}}\p{{N}}]?((?=[\p{{L}}])([^a-z]))+((?=[\p{{L}}])([^A-Z]))*{_CONTRACTION}?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]|\s+(?!\S)|\s+",)
# SentencePiece-style BPE (Gemma 4): no word split, only newline runs apart from the rest.
NEWLINE_RUNS = ("[^\\n]+|[\\n]+",)
SEED_CODER = (rf"{_CONTRACTION}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1}}| ?[^\s\p{{L}}\p{{N}}\r\n]+|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+",)


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer type: its regexes and the vocabulary flags that go with it."""

    name: str
    regexes: tuple[str, ...]
    clean_spaces: bool = True  # llama_detokenize removes " ," " ." " 's" ... spaces
    ignore_merges: bool = False  # a word that is itself a token skips the merges
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    add_sep: bool = False
    no_bos: bool = False  # the family's default BOS id does not exist
    # SentencePiece-style BPE (Gemma 4): words are merged as raw UTF-8, not GPT-2's byte map,
    # spaces are written "\u2581" first, and bytes missing from the vocabulary become <0xXX>.
    byte_level: bool = True
    escape_spaces: bool = False
    whole_newline_runs: bool = False  # a run of newlines that is itself a token skips the merges


def _family(names: str, regexes: tuple[str, ...] | str, **flags) -> dict[str, PreTokenizer]:
    rx = (regexes,) if isinstance(regexes, str) else regexes
    return {n: PreTokenizer(n, rx, **flags) for n in names.split()}


# tokenizer.ggml.pre -> pre-tokenizer, following llama.cpp's llama_vocab::impl::load.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_family("default", DEFAULT),
    **_family("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", LLAMA3,
              ignore_merges=True, add_bos=True),
    **_family("dbrx smaug-bpe", LLAMA3),
    **_family("glm4 chatglm-bpe", LLAMA3, no_bos=True),
    **_family("deepseek-llm", DEEPSEEK_LLM, clean_spaces=False),
    **_family("deepseek-coder", DEEPSEEK_CODER, clean_spaces=False),
    **_family("deepseek-v3", DEEPSEEK3, clean_spaces=False),
    **_family("falcon", FALCON),
    **_family("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert exaone4 mpt "
              "olmo jais", GPT2),
    **_family("jina-v1-en jina-v2-code roberta-bpe", GPT2, add_sep=True),
    **_family("trillion granite-docling", GPT2, clean_spaces=False),
    **_family("starcoder refact codeshell exaone minerva-7b mellum2", STARCODER),
    **_family("command-r smollm", STARCODER, clean_spaces=False),
    **_family("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan grok-2 solar-open", QWEN2, clean_spaces=False),
    **_family("stablelm2 megrez", QWEN2),
    **_family("qwen35", QWEN35, clean_spaces=False),
    **_family("poro-chat", PORO, clean_spaces=False),
    **_family("bloom gpt3-finnish", PORO),
    **_family("viking", VIKING, clean_spaces=False),
    **_family("tekken", TEKKEN, clean_spaces=False, ignore_merges=True, add_bos=True),
    **_family("gpt-4o llama4 kanana2 talkie minimax-m2", GPT4O, clean_spaces=False),
    **_family("bailingmoe bailingmoe2 llada-moe", BAILINGMOE, clean_spaces=False),
    **_family("seed-coder", SEED_CODER, clean_spaces=False),
    **_family("gemma4 granite-embed-multi-311m", NEWLINE_RUNS, byte_level=False, escape_spaces=True,
              whole_newline_runs=True, add_bos=True),
    **_family("sarvam-moe", NEWLINE_RUNS, byte_level=False, escape_spaces=True, clean_spaces=False),
}


def pre_tokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer for a tokenizer.ggml.pre value; unknown or missing ones get 'default'."""
    if not name:
        log.warning("GGUF names no pre-tokenizer (tokenizer.ggml.pre): using 'default'")
        return PRE_TOKENIZERS["default"]
    pre = PRE_TOKENIZERS.get(name)
    if pre is None:
        # llama.cpp refuses such a file; a quality warning and the default split is friendlier.
        log.warning("unknown pre-tokenizer %r: using 'default', tokens may differ from llama.cpp", name)
        return PRE_TOKENIZERS["default"]
    return pre


# --- code point classes, as in llama.cpp's generated unicode tables ------------------------------

_CATEGORY_RE = [(regex.compile(p), marker) for p, marker in (
    (r"\s", 0x0B),  # whitespace first: std::regex only knows ASCII \s, so it stands in as \v
    (r"\p{N}", 0xD1), (r"\p{L}", 0xD2), (r"\p{P}", 0xD3), (r"\p{M}", 0xD4), (r"\p{S}", 0xD5),
)]
# What \p{X} becomes in a collapsed regex: its category byte plus its ASCII members.
_CATEGORY_CLASS = {
    "N": (0xD1, "0-9"),
    "L": (0xD2, "A-Za-z"), "Lu": (0xD2, "A-Za-z"), "Ll": (0xD2, "A-Za-z"), "Lt": (0xD2, "A-Za-z"),
    "Lm": (0xD2, "A-Za-z"), "Lo": (0xD2, "A-Za-z"),
    "P": (0xD3, "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"),
    "M": (0xD4, ""),
    "S": (0xD5, "\\$\\+<->^`\\|"),  # sic: '~' is missing, as in llama.cpp
}
_CATEGORY_TOKEN = re.compile(r"\\p\{(\w{1,2})\}")


class _CollapseTable(dict):
    """str.translate table: ASCII stays, other code points become their category byte."""

    def __missing__(self, cp: int) -> int:
        value = cp
        if cp >= 128:
            ch = chr(cp)
            value = next((marker for rx, marker in _CATEGORY_RE if rx.match(ch)), 0xD0)
        self[cp] = value
        return value


class _WhitespaceTable(dict):
    """str.translate table: non-ASCII whitespace becomes \\v, which std::regex's \\s matches."""

    def __missing__(self, cp: int) -> int:
        value = 0x0B if cp >= 128 and _CATEGORY_RE[0][0].match(chr(cp)) else cp
        self[cp] = value
        return value


_COLLAPSE = _CollapseTable()
_WHITESPACE = _WhitespaceTable()


def _ecma_to_python(expr: str) -> str:
    """Rewrite the ECMAScript bits Python reads differently: a top-level `$` means end of input."""
    out, inside, i = [], False, 0
    while i < len(expr):
        c = expr[i]
        if c == "\\":
            out.append(expr[i:i + 2])
            i += 2
            continue
        if c == "[":
            inside = True
        elif c == "]":
            inside = False
        elif c == "$" and not inside:
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _collapse_regex(expr: str) -> str:
    """Replace each \\p{X} by the class of its category byte and ASCII members (llama.cpp's way)."""
    out, inside, i = [], False, 0
    while i < len(expr):
        c = expr[i]
        if c == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True
        elif c == "]" and inside and expr[i - 1] != "\\":
            inside = False
        m = _CATEGORY_TOKEN.match(expr, i)
        if m and m.group(1) in _CATEGORY_CLASS:
            marker, ascii_members = _CATEGORY_CLASS[m.group(1)]
            cls = chr(marker) + ascii_members
            out.append(cls if inside else f"[{cls}]")
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Step:
    """One regex of a pre-tokenizer, compiled for the text view it runs on."""

    def __init__(self, expr: str):
        if expr == GPT2:
            # llama.cpp's hand-written GPT-2 splitter also takes a lone whitespace run
            self.view, self.pattern = "text", regex.compile(expr + r"|\s+")
        elif expr == LLAMA3:
            self.view, self.pattern = "text", regex.compile(expr)
        elif _CATEGORY_TOKEN.search(expr):
            self.view, self.pattern = "collapsed", re.compile(_ecma_to_python(_collapse_regex(expr)), re.ASCII)
        else:
            self.view, self.pattern = "whitespace", re.compile(_ecma_to_python(expr), re.ASCII)


class Splitter:
    """Splits text into the words a BPE pre-tokenizer produces."""

    def __init__(self, regexes: tuple[str, ...]):
        self.steps = [_Step(r) for r in regexes]

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; their concatenation is `text`."""
        views = {"text": text}
        spans = [(0, len(text))]
        for step in self.steps:
            view = views.get(step.view)
            if view is None:
                table = _COLLAPSE if step.view == "collapsed" else _WHITESPACE
                view = views[step.view] = text.translate(table)
            finditer = step.pattern.finditer
            new: list[tuple[int, int]] = []
            for start, end in spans:
                last = start
                for m in finditer(view, start, end):
                    a, b = m.span()
                    if a > last:
                        new.append((last, a))
                    if b > a:
                        new.append((a, b))
                    last = b
                if last < end:
                    new.append((last, end))
            spans = new
        return [text[a:b] for a, b in spans]


@cache
def splitter(regexes: tuple[str, ...]) -> Splitter:
    """A compiled splitter for a tuple of llama.cpp regexes (compiled once per process)."""
    return Splitter(regexes)


# --- GPT-2 byte-level encoding ---------------------------------------------------------------------

def _byte_to_unicode() -> dict[int, str]:
    # Printable bytes stand for themselves; the rest are moved past U+00FF, in byte order.
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}
# latin-1 decoding turns bytes into code points 0-255, which this table maps in one translate().
_BYTE_TRANSLATE = {b: c for b, c in BYTE_TO_UNICODE.items()}


def byte_encode(word: str) -> str:
    """The GPT-2 byte-level form of a word: one printable character per UTF-8 byte."""
    return word.encode("utf-8", "surrogateescape").decode("latin-1").translate(_BYTE_TRANSLATE)
