"""Chat -> prompt: Go text/template engine, sandboxed Jinja chat templates, named templates.

Modules: `gotemplate` (Go's text/template as Ollama uses it), `jinja` (HF chat_template in a
sandbox), `named` (Ollama's built-in template names), `detect` (Jinja -> named template),
`prompt` (Ollama's chat and generate prompt assembly).
"""

from .errors import TemplateError

__all__ = ["TemplateError"]
