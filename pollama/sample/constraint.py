"""Structured outputs: token masks that keep a generation inside a JSON grammar.

Ollama's `format` ("json" or a JSON-schema object) and OpenAI's `response_format` become a
`TokenConstraint` for one sequence. Each step the generation loop asks for `mask()`, sets the
logits of disallowed tokens to -inf (`apply_mask`), samples, and reports the token with
`accept()`; when `done` is true the grammar is complete and the sequence ends ("stop").

The grammar engine is llguidance: it compiles the schema itself and computes a mask over the
whole vocabulary in tens of microseconds, walking a token trie built once per tokenizer.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import llguidance
import numpy as np

from pollama.tokenizer.tokenizer import Tokenizer

# Between JSON tokens a model may write a few spaces, or one line break and an indentation
# (pretty-printing up to 12 levels of 4 spaces), but never an unbounded run: small models
# otherwise loop on whitespace until num_predict. llguidance matches this pattern at most
# once at each place JSON allows whitespace; Ollama's own grammar has no bound there.
JSON_WHITESPACE = r"(?:[ \t]{0,8}|\r?\n[ \t]{0,48})"

# Ollama's "json" format is its fixed GBNF grammar whose root is an object (llm/llama_server.go
# grammarJSON, as llama.cpp's json.gbnf): any JSON object, nothing before the "{".
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


class ConstraintViolation(ValueError):
    """A token was offered that the format's grammar does not allow at this point."""


def _invalid_format(fmt: Any) -> ValueError:
    # Ollama's message quotes the raw JSON of the field with Go's %q.
    try:
        raw = json.dumps(fmt, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raw = repr(fmt)
    return ValueError(f'invalid format: {json.dumps(raw, ensure_ascii=False)}; '
                      'expected "json" or a valid JSON Schema object')


# --- the llguidance tokenizer, built once per Tokenizer ------------------------------------------

class _TokenizerCallbacks:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, and a tokenize callback."""

    def __init__(self, tokenizer: Tokenizer):
        # Weak, because the cache below maps the tokenizer to an object that holds this callback:
        # a strong reference would keep both alive forever.
        self._tokenizer = weakref.ref(tokenizer)
        size = tokenizer.vocab_size
        # special=True: control tokens keep their text (b"<|im_end|>"), so llguidance can tell
        # them apart once they are marked special below.
        self.tokens = [tokenizer.token_piece(i, special=True) for i in range(size)]
        # Marked tokens are never matched as grammar text: JSON may contain the characters
        # "<|im_end|>" but must spell them with ordinary tokens.
        self.special_token_ids = [i for i in range(size) if _is_marker_token(tokenizer, i, self.tokens[i])]
        eog = sorted(tokenizer.eog_ids)
        self.eos_token_id = eog[0] if eog else tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text: str | bytes) -> list[int]:
        # llguidance calls this with str (and once with bytes, to probe); it must not raise,
        # since an exception here becomes a panic inside the native library.
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        tokenizer = self._tokenizer()
        if tokenizer is None:
            return []
        try:
            return tokenizer.encode(text, add_special=False, parse_special=False)
        except Exception:
            return []


def _is_marker_token(tokenizer: Tokenizer, token_id: int, piece: bytes) -> bool:
    if tokenizer.is_control(token_id):
        return True
    # User-defined tokens are ordinary text (e.g. runs of spaces) unless they look like tags.
    return tokenizer.is_special(token_id) and piece.startswith(b"<") and piece.endswith(b">")


_guidance_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_guidance_tokenizers_lock = threading.Lock()


def guidance_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` (its token trie), built on first use and cached (~0.3 s)."""
    with _guidance_tokenizers_lock:
        cached = _guidance_tokenizers.get(tokenizer)
        if cached is None:
            callbacks = _TokenizerCallbacks(tokenizer)
            wrapper = llguidance.TokenizerWrapper(callbacks)
            eog = sorted(tokenizer.eog_ids)
            cached = llguidance.LLTokenizer(
                wrapper, eos_token=eog if eog else None, slices=llguidance.LLTokenizer.json_slices()
            )
            # llguidance copied the token bytes into its trie; only the tokenize callback stays in use.
            wrapper.tokens = callbacks.tokens = []
            _guidance_tokenizers[tokenizer] = cached
        return cached


# --- compiling a format ----------------------------------------------------------------------

def _compile_schema(schema: Mapping[str, Any], lenient: bool) -> str:
    # \u escapes of any character, as Ollama's JSON grammar allows (llguidance's default only
    # allows them for control characters).
    overrides: dict[str, Any] = {"whitespace_pattern": JSON_WHITESPACE, "json_allow_general_unicode_escapes": True}
    if lenient:
        overrides["lenient"] = True
    return llguidance.LLMatcher.grammar_from_json_schema(dict(schema), overrides=overrides)


def _schema_grammar(schema: Mapping[str, Any], guidance: llguidance.LLTokenizer) -> tuple[str, list[str]]:
    """The grammar of `schema`, and warnings about what it had to leave unenforced."""
    try:
        grammar = _compile_schema(schema, lenient=False)
    except (ValueError, TypeError) as e:  # not serializable as JSON
        raise ValueError(f"invalid JSON schema in format: {e}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, guidance)
    if not failed:
        return grammar, messages
    # Ollama (llama.cpp's json_schema_to_grammar) ignores keywords it cannot enforce, such as
    # uniqueItems or an unknown string format; so do we, rather than refuse a schema Ollama
    # takes. Errors that remain (bad $ref, invalid regex, unsatisfiable bounds) are the user's.
    strict_error = messages[0] if messages else "unknown error"
    lenient_grammar = _compile_schema(schema, lenient=True)
    failed, lenient_messages = llguidance.LLMatcher.validate_grammar_with_warnings(lenient_grammar, guidance)
    if failed:
        raise ValueError(f"invalid JSON schema in format: {_one_line(strict_error)}")
    return lenient_grammar, lenient_messages or [_one_line(strict_error)]


def _one_line(message: str) -> str:
    # Schema errors are short but may span lines (a regex with a caret under the fault).
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _first_line(message: str) -> str:
    # llguidance appends parser state and the grammar to its errors; the first line says why.
    return message.strip().splitlines()[0] if message.strip() else message


def make_constraint(tokenizer: Tokenizer, format: Any) -> TokenConstraint | None:
    """The constraint for Ollama's `format`: "json" (any JSON object) or a JSON-schema object.

    None and "" mean no format (as in Ollama) and give None. Anything else that is not "json"
    or a mapping raises ValueError("invalid format: ..."); a schema that cannot be compiled
    raises ValueError("invalid JSON schema in format: <reason>").
    """
    if format is None or format == "":
        return None
    if format == "json":
        schema: Mapping[str, Any] = ANY_JSON_OBJECT
    elif isinstance(format, Mapping):
        schema = format
    else:
        raise _invalid_format(format)
    guidance = guidance_tokenizer(tokenizer)
    grammar, warnings = _schema_grammar(schema, guidance)
    matcher = llguidance.LLMatcher(guidance, grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(f"invalid JSON schema in format: {_first_line(matcher.get_error())}")
    return TokenConstraint(tokenizer, guidance, matcher, warnings)


def format_from_response_format(response_format: Any) -> Any:
    """Ollama's `format` for OpenAI's `response_format`, as Ollama's OpenAI layer maps it.

    {"type": "json_object"} -> "json"; {"type": "json_schema", "json_schema": {"schema": S}} -> S;
    any other type ("text") or a json_schema without a schema -> None (no format).
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError("response_format must be an object such as {\"type\": \"json_object\"}")
    kind = str(response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, Mapping):
            return spec.get("schema")
    return None


# --- one sequence ------------------------------------------------------------------------------

class TokenConstraint:
    """The grammar state of one sequence: which tokens may come next, and whether it is complete."""

    def __init__(self, tokenizer: Tokenizer, guidance: llguidance.LLTokenizer,
                 matcher: llguidance.LLMatcher, warnings: list[str] | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.warnings = list(warnings or [])  # parts of the schema left unenforced
        self._guidance = guidance
        self._matcher = matcher
        self.tokens: list[int] = []  # accepted so far
        # llguidance writes one bit per token, 32 tokens a word, token 32*w+b at bit b of word w.
        self._bits = np.zeros((guidance.vocab_size + 31) // 32, dtype=np.uint32)

    def mask(self) -> np.ndarray:
        """Bool [vocab_size]: the tokens allowed next (end-of-generation ones when the grammar may end)."""
        self._raise_if_failed()
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._raise_if_failed()
        # As little-endian bytes (no copy on little-endian machines) the bits run from token 0 up.
        words = self._bits.astype("<u4", copy=False)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[: self.vocab_size]
        return allowed.view(np.bool_)

    def accept(self, token: int) -> None:
        """Advance past `token`; ConstraintViolation if the grammar does not allow it here."""
        token = int(token)
        if not 0 <= token < self.vocab_size:
            raise ConstraintViolation(f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})")
        self._raise_if_failed()
        # Checked first, so a rejected token leaves the state as it was (consuming it would not).
        if self._matcher.validate_tokens([token]) != 1:
            piece = self.tokenizer.token_piece(token, special=True)
            so_far = self.text()
            if len(so_far) > 60:
                so_far = "..." + so_far[-60:]
            raise ConstraintViolation(
                f"token {token} ({piece.decode('utf-8', 'replace')!r}) is not allowed by the format after {so_far!r}"
            )
        if not self._matcher.consume_token(token):
            self._raise_if_failed()
        self.tokens.append(token)

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing may follow: the generation must stop ("stop")."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    @property
    def can_end(self) -> bool:
        """The text so far is a complete document (end-of-generation tokens are allowed)."""
        return self._matcher.is_accepting()

    def text(self) -> str:
        """The text accepted so far (end-of-generation tokens render as nothing)."""
        return self.tokenizer.decode(self.tokens)

    def reset(self) -> None:
        """Back to the start of the grammar, as if no token had been accepted."""
        self._matcher.reset()
        self.tokens = []

    def clone(self) -> TokenConstraint:
        """An independent copy in the same state (for a second sequence or a look-ahead)."""
        copy = TokenConstraint(self.tokenizer, self._guidance, self._matcher.deep_copy(), self.warnings)
        copy.tokens = list(self.tokens)
        return copy

    def _raise_if_failed(self) -> None:
        if self._matcher.is_error():
            raise ConstraintViolation(f"structured output failed: {_first_line(self._matcher.get_error())}")


def apply_mask(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of `logits` with -inf where `mask` is False; ids past the mask's end are disallowed too
    (models whose output is padded beyond the tokenizer's vocabulary)."""
    logits = np.asarray(logits)
    out = np.full(logits.shape, -np.inf, dtype=logits.dtype)
    n = min(mask.shape[-1], logits.shape[-1])
    np.copyto(out[..., :n], logits[..., :n], where=mask[..., :n])
    return out
