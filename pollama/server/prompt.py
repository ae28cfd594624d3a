"""Requests to prompt text: the model's template applied to a chat or a generate request.

The rendering (Go templates, collation, truncation to num_ctx) is pollama.template.prompt's;
this module is the one place the server calls it, with what Ollama's handlers add around it:
the Modelfile's SYSTEM and MESSAGEs, and token counts from the model's runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pollama.server.errors import APIError
from pollama.server.models import ModelRef

Tokenize = Callable[[str], list[int]]


def _template_error(e: Exception, what: str) -> APIError:
    return APIError(400 if what == "request" else 500, f"{what} template: {e}")


def chat_prompt(model: ModelRef, messages: list[dict[str, Any]], *, num_ctx: int, truncate: bool, tokenize: Tokenize) -> str:
    """The prompt for a chat: the Modelfile's MESSAGEs and SYSTEM first (as Ollama's chat
    handler puts them), then the request's messages, oldest dropped to fit num_ctx."""
    from pollama.template import TemplateError
    from pollama.template.prompt import chat_prompt as assemble

    full = list(model.messages)
    if model.system and (not messages or messages[0].get("role") != "system"):
        full.insert(0, {"role": "system", "content": model.system})
    full.extend(messages)
    try:
        prompt, _media = assemble(model.template, full, count_tokens=lambda text: len(tokenize(text)),
                                  num_ctx=num_ctx, truncate=truncate)
    except TemplateError as e:
        raise _template_error(e, "model") from None
    return prompt


def generate_prompt(model: ModelRef, prompt: str, *, system: str | None, template: str | None, suffix: str,
                    context_text: str | None, tokenize: Tokenize, num_ctx: int) -> str:
    """The prompt for /api/generate (not raw): the template (or the request's override) with
    the system prompt, Modelfile messages and suffix; an earlier exchange's `context` first."""
    from pollama.template import TemplateError
    from pollama.template.prompt import generate_prompt as assemble

    if suffix and "insert" not in model.capabilities and not template:
        raise APIError(400, f"{model.name} does not support insert")
    try:
        rendered, _media = assemble(
            model.template, prompt, system=system or "", model_system=model.system or "",
            model_messages=model.messages, suffix=suffix, template_override=template or None,
            context=context_text, count_tokens=lambda text: len(tokenize(text)), num_ctx=num_ctx,
        )
    except TemplateError as e:
        raise _template_error(e, "request" if template else "model") from None
    return rendered
