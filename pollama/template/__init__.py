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
    "ThinkingParser": "thinking",
    "infer_thinking_tags": "thinking",
    "ToolCallParser": "toolcalls",
    "tool_call_tag_for": "toolcalls",
    "jinja_tool_call_tag": "toolcalls",
    "ChatOutputParser": "output",
    "to_openai_tool_calls": "output",
    "openai_finish_reason": "output",
}

__all__ = [
    "ChatOutputParser",
    "Media",
    "NamedTemplate",
    "Template",
    "TemplateError",
    "ThinkingParser",
    "ToolCallParser",
    "capabilities",
    "chat_prompt",
    "compile_chat_template",
    "detect_from_gguf_metadata",
    "detect_named",
    "generate_prompt",
    "infer_thinking_tags",
    "jinja_chat_prompt",
    "jinja_tool_call_tag",
    "named_template",
    "openai_finish_reason",
    "render_chat_template",
    "thinking_tags",
    "to_openai_tool_calls",
    "tool_call_tag",
    "tool_call_tag_for",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
