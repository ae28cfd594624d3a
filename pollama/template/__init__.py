"""Chat -> prompt: Go text/template engine, sandboxed Jinja chat templates, named templates.

Modules: `gotemplate` (Go's text/template as Ollama uses it), `jinja` (HF chat_template in a
sandbox), `named` (Ollama's twenty built-in template names), `detect` (Jinja -> named
template), `prompt` (Ollama's chat and generate prompt assembly), `values` (the template
structs Ollama passes).

The names below are imported on first use, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib

from .errors import TemplateError

_EXPORTS = {
    "Template": "gotemplate",
    "capabilities": "gotemplate",
    "thinking_tags": "gotemplate",
    "tool_call_tag": "gotemplate",
    "render_chat_template": "jinja",
    "compile_chat_template": "jinja",
    "NamedTemplate": "named",
    "named_template": "named",
    "detect_named": "detect",
    "detect_from_gguf_metadata": "detect",
    "chat_prompt": "prompt",
    "generate_prompt": "prompt",
    "jinja_chat_prompt": "prompt",
    "Media": "prompt",
}

__all__ = [
    "Media",
    "NamedTemplate",
    "Template",
    "TemplateError",
    "capabilities",
    "chat_prompt",
    "compile_chat_template",
    "detect_from_gguf_metadata",
    "detect_named",
    "generate_prompt",
    "jinja_chat_prompt",
    "named_template",
    "render_chat_template",
    "thinking_tags",
    "tool_call_tag",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
