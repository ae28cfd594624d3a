"""Which built-in named template a HF Jinja chat_template is, decided by what both render.

Ollama picks the named template whose stored Jinja text is within Levenshtein distance 100
of the model's chat_template. We decide on behaviour instead: the Jinja template (in the
sandbox) and every named Go template render the same probe conversations, and a named
template is chosen only when its prompts are the Jinja template's prompts:

* equal after dropping a leading BOS token and trailing whitespace, on every probe the
  Jinja template accepts (a template may refuse some, e.g. Gemma's refuses system messages);
* on probes without a system message, the Jinja prompt may add a prefix (a default system
  prompt, as SmolLM2's and Qwen's templates add): the named prompt must then be its end;
* the probes include tools: a template that writes tools into the prompt (Qwen 2.5's)
  matches only a named template that writes them the same way;
* a near miss counts only within a few characters in all (`MAX_EDITS`).

None when nothing qualifies: the caller then keeps the Jinja template itself.
"""

from __future__ import annotations

from .errors import TemplateError
from .jinja import compile_chat_template
from .named import NamedTemplate, all_named
from .prompt import execute

# Leading BOS texts that a Jinja template writes and Ollama leaves to the tokenizer.
KNOWN_BOS = ("<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>", "<|endoftext|>")

MAX_EDITS = 4  # total character edits tolerated across the probes, for a near miss

_SYSTEM = {"role": "system", "content": "You are a careful assistant."}
_USER1 = {"role": "user", "content": "What is the capital of France?"}
_ASSISTANT = {"role": "assistant", "content": "The capital of France is Paris."}
_USER2 = {"role": "user", "content": "And of Italy?"}
_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "description": "The city"}}}}}]

# (name, messages, tools)
PROBES = [
    ("user", [_USER1], None),
    ("user-assistant-user", [_USER1, _ASSISTANT, _USER2], None),
    ("system-user", [_SYSTEM, _USER1], None),
    ("system-user-assistant-user", [_SYSTEM, _USER1, _ASSISTANT, _USER2], None),
    ("user-with-tools", [_USER1], _TOOLS),
    ("system-user-with-tools", [_SYSTEM, _USER1], _TOOLS),
]


def _normalize(text: str, bos_token: str) -> str:
    for bos in ((bos_token,) if bos_token else ()) + KNOWN_BOS:
        if text.startswith(bos):
            text = text[len(bos):]
            break
    return text.rstrip()


def _bounded_edits(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of a and b if it is at most `limit`, else limit + 1 (banded DP)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    if a == b:
        return 0
    inf = limit + 1
    prev = {j: j for j in range(min(len(b), limit) + 1)}
    for i in range(1, len(a) + 1):
        cur = {}
        lo, hi = max(0, i - limit), min(len(b), i + limit)
        for j in range(lo, hi + 1):
            if j == 0:
                cur[j] = i
                continue
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev.get(j, inf) + 1, cur.get(j - 1, inf) + 1, prev.get(j - 1, inf) + cost)
        prev = cur
        if min(prev.values()) > limit:
            return inf
    return min(prev.get(len(b), inf), inf)


def _jinja_renders(chat_template: str, bos_token: str, eos_token: str) -> dict[str, str] | None:
    try:
        compiled = compile_chat_template(chat_template)
    except TemplateError:
        return None
    renders = {}
    for name, messages, tools in PROBES:
        try:
            text = compiled.render(messages, tools=tools, add_generation_prompt=True,
                                   bos_token=bos_token, eos_token=eos_token)
        except TemplateError:
            continue  # the template refuses this conversation (e.g. no system role)
        renders[name] = _normalize(text, bos_token)
    if "user" not in renders or len(renders) < 2:
        return None
    return renders


def _score(named: NamedTemplate, jinja: dict[str, str], bos_token: str) -> tuple[int, int] | None:
    """(edits, probes matched only as a suffix) for a candidate, or None when it does not qualify."""
    tmpl = named.parse()
    edits = 0
    suffix_only = 0
    for name, messages, tools in PROBES:
        if name not in jinja:
            continue
        try:
            ours = _normalize(execute(tmpl, messages=messages, tools=tools), bos_token)
        except TemplateError:
            return None
        theirs = jinja[name]
        if ours == theirs:
            continue
        has_system = any(m["role"] == "system" for m in messages)
        if not has_system and ours and theirs.endswith(ours):
            suffix_only += 1
            continue
        edits += _bounded_edits(ours, theirs, MAX_EDITS - edits)
        if edits > MAX_EDITS:
            return None
    return edits, suffix_only


def detect_named(chat_template: str, *, bos_token: str = "", eos_token: str = "</s>") -> NamedTemplate | None:
    """The built-in named template that renders as `chat_template` does, or None.

    Pass the model's BOS and EOS texts when known (GGUF tokenizer metadata): templates write
    eos_token after answers, and a leading BOS is dropped before comparing.
    """
    jinja = _jinja_renders(chat_template, bos_token, eos_token)
    if jinja is None:
        return None
    best: tuple[tuple[int, int], str, NamedTemplate] | None = None
    for named in all_named():
        score = _score(named, jinja, bos_token)
        if score is None:
            continue
        key = (score, named.name)
        if best is None or key < best[:2]:
            best = (score, named.name, named)
    return best[2] if best else None


def _token_text(metadata, key: str) -> str:
    tokens = metadata.get("tokenizer.ggml.tokens")
    token_id = metadata.get(key)
    if tokens is None or not isinstance(token_id, int) or not 0 <= token_id < len(tokens):
        return ""
    text = tokens[token_id]
    return text if isinstance(text, str) else ""


def detect_from_gguf_metadata(metadata) -> NamedTemplate | None:
    """The named template for a GGUF's tokenizer.chat_template (BOS/EOS texts from its vocabulary), or None."""
    chat_template = metadata.get("tokenizer.chat_template")
    if not isinstance(chat_template, str) or not chat_template.strip():
        return None
    return detect_named(chat_template, bos_token=_token_text(metadata, "tokenizer.ggml.bos_token_id"),
                        eos_token=_token_text(metadata, "tokenizer.ggml.eos_token_id") or "</s>")
