"""Requests to prompt text: the model's template applied to a chat or a generate request.

The rendering itself (Go templates, truncation to num_ctx) belongs to pollama.template; this
module is the one place the server calls it. Until that package provides prompt assembly,
only the default template (`{{ .Prompt }}`, what a model without a TEMPLATE uses) is known
here, and a model with another template is refused with a clear error rather than sent an
unrendered prompt.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pollama.server.errors import APIError
from pollama.server.models import ModelRef

Tokenize = Callable[[str], list[int]]
DEFAULT_TEMPLATE = "{{ .Prompt }}"


def _assembly():
    """pollama.template.prompt when it exists, else None."""
    try:
        return importlib.import_module("pollama.template.prompt")
    except ImportError:
        return None


def _is_default(template: str | None) -> bool:
    return template is None or template.strip() in ("", DEFAULT_TEMPLATE, "{{ .Prompt }}{{ .Response }}")


def _unsupported(model: ModelRef) -> APIError:
    return APIError(501, f"model {model.name} has a prompt template, which this build of pollama cannot render yet")


def chat_prompt(model: ModelRef, messages: list[dict[str, Any]], *, num_ctx: int, truncate: bool, tokenize: Tokenize) -> str:
    """The prompt for a chat: system and Modelfile messages first, truncated to num_ctx."""
    assembly = _assembly()
    if assembly is not None and hasattr(assembly, "chat_prompt"):
        return assembly.chat_prompt(
            model.template or DEFAULT_TEMPLATE, messages, system=model.system, tokenize=tokenize,
            num_ctx=num_ctx, truncate=truncate,
        )
    if not _is_default(model.template):
        raise _unsupported(model)
    # The default template renders each turn as its prompt then its response: the
    # conversation's user and assistant texts in order (it has no place for a system prompt).
    texts = [m.get("content") or "" for m in messages if m.get("role") in ("user", "assistant")]
    return "".join(texts)


def generate_prompt(model: ModelRef, prompt: str, *, system: str | None, template: str | None, suffix: str,
                    context_text: str, tokenize: Tokenize, num_ctx: int) -> str:
    """The prompt for /api/generate: the template with Prompt, System and Suffix; `context`
    text (an earlier exchange) goes first."""
    assembly = _assembly()
    chosen = template if template else model.template
    if assembly is not None and hasattr(assembly, "generate_prompt"):
        return assembly.generate_prompt(
            chosen or DEFAULT_TEMPLATE, prompt, system=system if system is not None else model.system,
            suffix=suffix, context=context_text, messages=model.messages, tokenize=tokenize, num_ctx=num_ctx,
        )
    if not _is_default(chosen):
        raise _unsupported(model)
    if suffix:
        raise APIError(400, f"{model.name} does not support insert")
    return context_text + prompt
