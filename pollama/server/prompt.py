"""Requests to prompt text: the model's template applied to a chat or a generate request.

The rendering (Go templates, HF chat templates, collation, truncation to num_ctx) is
pollama.template.prompt's; this module is the one place the server calls it, with what
Ollama's handlers add around it: the Modelfile's SYSTEM and MESSAGEs, and token counts and
special-token texts from the model's runner.

Which template: the Modelfile's TEMPLATE (Go) when the model has one; else, as Ollama does
today, the GGUF's own tokenizer.chat_template (Jinja); else the default `{{ .Prompt }}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pollama.server.errors import APIError
from pollama.server.models import ModelRef

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Specials:
    """The texts of the model's BOS and EOS tokens (HF chat templates write them), and whether
    the tokenizer adds BOS itself (then a template's leading BOS text is dropped)."""

    bos_token: str = ""
    eos_token: str = ""
    adds_bos: bool = False


def _template_error(e: Exception, what: str) -> APIError:
    return APIError(400 if what == "request" else 500, f"{what} template: {e}")


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
    from pollama.template.prompt import chat_prompt as go_chat_prompt
    from pollama.template.prompt import jinja_chat_prompt

    full = _with_model_messages(model, messages)
    count = lambda text: len(tokenize(text))
    jinja = hf_chat_template(model)
    try:
        if jinja is not None:
            prompt, media = jinja_chat_prompt(jinja, full, tools=tools or None, think=think,
                                               bos_token=specials.bos_token, eos_token=specials.eos_token,
                                               tokenizer_adds_bos=specials.adds_bos, count_tokens=count,
                                               num_ctx=num_ctx, truncate=truncate)
        else:
            prompt, media = go_chat_prompt(model.template, full, tools=tools, think=think, count_tokens=count,
                                           num_ctx=num_ctx, truncate=truncate)
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
                    think: bool | str | None = None, images: list[str] = ()) -> tuple[str, list[str]]:
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
    count = lambda text: len(tokenize(text))
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
