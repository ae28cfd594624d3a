"""Requests to prompt text: the model's template applied to a chat or a generate request.

The rendering (Go templates, HF chat templates, collation, truncation to num_ctx) is
pollama.template.prompt's; this module is the one place the server calls it, with what
Ollama's handlers add around it: the Modelfile's SYSTEM and MESSAGEs, and token counts and
special-token texts from the model's runner.

Which template: the Modelfile's TEMPLATE (Go) when the model has one; else, as Ollama does
today, the GGUF's own tokenizer.chat_template (Jinja); else the default `{{ .Prompt }}`.

Size. Text beyond pollama.runner.limits.prompt_char_limit characters cannot fit in num_ctx
tokens, so it is never rendered whole nor tokenized: a generate prompt (or system, suffix,
context) beyond it, or a chat whose last message, or system messages, are, is a 400 at
once; the older messages of a chat that cannot be in any prompt that fits (more text after
them than fits, or more messages than num_ctx) are dropped before the template sees them,
as truncation would drop them; without truncation such a chat is a 400. Truncation then
finds the first message to keep by bisection (Ollama tries each in turn, a tokenization
of the whole remaining chat per message dropped), and a text is counted once: the runner
keeps its tokens for the prompt it is then sent (runner/serve.py Model.encode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pollama.runner import limits
from pollama.server.errors import APIError
from pollama.server.models import ModelRef

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Specials:
    """The texts of the model's BOS and EOS tokens (HF chat templates write them), whether
    the tokenizer adds BOS itself (then a template's leading BOS text is dropped), and the
    most input characters one of its tokens stands for (0: unknown; see runner/limits.py)."""

    bos_token: str = ""
    eos_token: str = ""
    adds_bos: bool = False
    max_token_chars: int = 0


def too_long(what: str, chars: int, num_ctx: int, max_token_chars: int = 0, truncate: bool = False) -> APIError:
    return APIError(400, limits.too_long_message(what, chars, num_ctx, max_token_chars, truncate))


class TokenCounter:
    """count_tokens for the templates' truncation: a text that cannot fit is not tokenized (its
    lower bound, more than num_ctx, is the answer), and a text is tokenized once however often
    it is asked about."""

    def __init__(self, tokenize: Tokenize, num_ctx: int, max_token_chars: int = 0):
        self.tokenize = tokenize
        self.limit = limits.prompt_char_limit(num_ctx, max_token_chars)
        self.per_token = limits.chars_per_token(max_token_chars)
        self.counted: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        if len(text) > self.limit:
            return -(-len(text) // self.per_token)
        n = self.counted.get(text)
        if n is None:
            if len(self.counted) >= 8:
                self.counted.clear()
            n = self.counted[text] = len(self.tokenize(text))
        return n


def _chars(message: dict[str, Any]) -> int:
    """Characters of a message that any prompt holding it holds (a lower bound of its share)."""
    content = message.get("content")
    return len(content) if isinstance(content, str) else 0


def fitting_messages(messages: list[dict[str, Any]], *, num_ctx: int, truncate: bool,
                     max_token_chars: int = 0) -> list[dict[str, Any]]:
    """The messages that could be in a prompt of num_ctx tokens, without tokenizing: a 400 when
    none could (the last message, or the system messages that are always kept, are too long;
    without truncate, the whole chat is; with it, they cannot even be cut to fit), else the
    oldest non-system messages that could
    not be kept are left out (each message is at least one token; its content at most
    chars_per_token characters a token)."""
    if not messages:
        return messages
    limit = limits.prompt_char_limit(num_ctx, max_token_chars)
    sizes = [_chars(m) for m in messages]
    system = [i for i, m in enumerate(messages) if m.get("role") == "system"]
    if not truncate:
        if sum(sizes) > limit:
            raise too_long("the prompt", sum(sizes), num_ctx, max_token_chars)
        if len(messages) > num_ctx:
            raise APIError(400, f"{len(messages)} messages cannot fit in the context of {num_ctx} tokens")
        return messages
    last = len(messages) - 1
    kept_chars = sum(sizes[i] for i in system) + (0 if last in system else sizes[last])
    # What is always kept may still be longer than the context: the runner then cuts the
    # prompt (keeping its start and its end), as Ollama's does.
    cut_limit = limits.prompt_char_limit(num_ctx, max_token_chars, truncate=True)
    if sizes[last] > cut_limit:
        raise too_long("the last message", sizes[last], num_ctx, max_token_chars, truncate=True)
    if kept_chars > cut_limit:
        raise too_long("the system messages with the last message", kept_chars, num_ctx, max_token_chars,
                       truncate=True)
    start, count = last, 1
    while start > 0:
        i = start - 1
        if messages[i].get("role") != "system":
            if kept_chars + sizes[i] > limit or count + 1 > num_ctx:
                break
            kept_chars += sizes[i]
        count += 1
        start = i
    if start == 0:
        return messages
    return [messages[i] for i in system if i < start] + messages[start:]


def _keep_from(messages: list[dict[str, Any]], fits: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Truncation's answer (the earlier system messages and messages[i:] for the first i whose
    prompt fits, or the last message) by bisection over i: dropping a message never makes a
    prompt longer, so fits(i) holds from some i on; log2(n) prompts are counted, not n."""

    def suffix(i: int) -> list[dict[str, Any]]:
        return [m for m in messages[:i] if m.get("role") == "system"] + messages[i:]

    lo, hi = 0, len(messages) - 1
    if hi <= 0 or fits(suffix(0)):
        return messages
    while hi - lo > 1:  # fits(lo) is false; hi is kept whether it fits or not
        mid = (lo + hi) // 2
        if fits(suffix(mid)):
            hi = mid
        else:
            lo = mid
    return suffix(hi)


def _template_error(e: Exception, what: str) -> APIError:
    # 400 also for the model's own template (Ollama answers 500): nothing the same request could
    # get on a retry, and clients that retry 5xx (the openai SDK) would render a hostile
    # template three times.
    return APIError(400, f"{what} template: {e}")


def hf_chat_template(model: ModelRef) -> str | None:
    """The GGUF's chat template, used when the model has no Go TEMPLATE."""
    if model.template is not None:
        return None
    text = model.metadata.get("tokenizer.chat_template")
    return text if isinstance(text, str) and text.strip() else None


def _with_model_messages(model: ModelRef, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Ollama's chat handler: the Modelfile's MESSAGEs, then its SYSTEM first unless the
    # request starts with a system message of its own, then the request's messages.
    full = list(model.messages)
    if model.system and (not messages or messages[0].get("role") != "system"):
        full.insert(0, {"role": "system", "content": model.system})
    return full + list(messages)


def chat_prompt(model: ModelRef, messages: list[dict[str, Any]], *, num_ctx: int, truncate: bool, tokenize: Tokenize,
                specials: Specials = Specials(), tools: list[dict[str, Any]] | None = None,
                think: bool | str | None = None) -> tuple[str, list[str]]:
    """The prompt for a chat, oldest messages dropped to fit num_ctx when truncate is on, and
    the images its [img-N] tags stand for (each message's, in order, from the first kept).

    `tools` go to the template (.Tools, or Jinja's tools); `think` to .Think/.ThinkLevel (or
    Jinja's enable_thinking and reasoning_effort)."""
    from pollama.template import TemplateError
    from pollama.template.prompt import IMAGE_TOKENS
    from pollama.template.prompt import chat_prompt as go_chat_prompt
    from pollama.template.prompt import jinja_chat_prompt

    full = fitting_messages(_with_model_messages(model, messages), num_ctx=num_ctx, truncate=truncate,
                            max_token_chars=specials.max_token_chars)
    count = TokenCounter(tokenize, num_ctx, specials.max_token_chars)
    jinja = hf_chat_template(model)
    if jinja is None and tools and model.harmony:
        from pollama.template.harmony import harmony_tools

        tools = harmony_tools(tools)  # as Ollama hands its Go template the tools harmony can name

    def render(msgs: list[dict[str, Any]], cut: bool):
        if jinja is not None:
            return jinja_chat_prompt(jinja, msgs, tools=tools or None, think=think,
                                     bos_token=specials.bos_token, eos_token=specials.eos_token,
                                     tokenizer_adds_bos=specials.adds_bos, count_tokens=count,
                                     num_ctx=num_ctx, truncate=cut)
        return go_chat_prompt(model.template, msgs, tools=tools, think=think, count_tokens=count,
                              num_ctx=num_ctx, truncate=cut)

    def fits(msgs: list[dict[str, Any]]) -> bool:
        images = sum(len(m.get("images") or []) for m in msgs)
        return count(render(msgs, False)[0]) + IMAGE_TOKENS * images <= num_ctx

    try:
        if truncate:
            # The first message to keep, found by bisection; the template's truncation then
            # confirms it with the same counts (remembered: nothing is tokenized twice).
            full = _keep_from(full, fits)
        prompt, media = render(full, truncate)
    except TemplateError as e:
        raise _template_error(e, "model") from None
    return prompt, [m.data for m in media]


def image_tags(prompt: str, images: list[str]) -> str:
    """A generate prompt with its images' [img-N] tags: as written, or else put first."""
    if not images or any(f"[img-{i}]" in prompt for i in range(len(images))):
        return prompt
    return "".join(f"[img-{i}]" for i in range(len(images))) + prompt


def generate_prompt(model: ModelRef, prompt: str, *, system: str | None, template: str | None, suffix: str,
                    context_text: str | None, tokenize: Tokenize, num_ctx: int, specials: Specials = Specials(),
                    think: bool | str | None = None, images: list[str] = (),
                    truncate: bool = True) -> tuple[str, list[str]]:
    """The prompt for /api/generate (not raw): the template (or the request's override) with
    the system prompt, Modelfile messages and suffix; an earlier exchange's `context` first.
    The images' tags go before the prompt unless it places them itself."""
    images = list(images)
    prompt = image_tags(prompt, images)
    from pollama.template import TemplateError
    from pollama.template.prompt import generate_prompt as go_generate_prompt
    from pollama.template.prompt import jinja_chat_prompt

    if suffix and "insert" not in model.capabilities and not template:
        raise APIError(400, f"{model.name} does not support insert")
    # All of these are in the prompt (truncation drops only the Modelfile's messages).
    chars = len(prompt) + len(system or model.system or "") + len(suffix) + len(context_text or "")
    if chars > limits.prompt_char_limit(num_ctx, specials.max_token_chars, truncate):
        raise too_long("the prompt", chars, num_ctx, specials.max_token_chars, truncate)
    count = TokenCounter(tokenize, num_ctx, specials.max_token_chars)
    jinja = None if template else hf_chat_template(model)
    try:
        if jinja is not None:
            messages = [{"role": "system", "content": system or model.system}] if (system or model.system) else []
            if context_text is None:
                messages += model.messages
            messages.append({"role": "user", "content": prompt})
            rendered, _media = jinja_chat_prompt(jinja, messages, think=think, bos_token=specials.bos_token,
                                                 eos_token=specials.eos_token, tokenizer_adds_bos=specials.adds_bos,
                                                 count_tokens=count, num_ctx=num_ctx)
            return (context_text or "") + rendered, images
        rendered, _media = go_generate_prompt(
            model.template, prompt, system=system or "", model_system=model.system or "",
            model_messages=model.messages, suffix=suffix, template_override=template or None,
            context=context_text, count_tokens=count, num_ctx=num_ctx, think=think,
        )
    except TemplateError as e:
        raise _template_error(e, "request" if template else "model") from None
    return rendered, images
