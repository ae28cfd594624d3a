"""What a model can do (Ollama's `capabilities`), from its GGUF metadata and its template.

Ollama's rules (server/images.go): a `<arch>.pooling_type` key means an embedding model,
anything else completes text; a vision tower in the GGUF (`<arch>.vision.block_count`) or a
projector layer adds vision; the Go template's variables add tools (`.Tools`) and insert
(`.Suffix`); thinking tags it can infer add thinking (as does the gpt-oss family).

A model without a Go template is prompted through its own Jinja chat_template (see
pollama/template/jinja.py), so there the Jinja template speaks for it: tools when it reads
the `tools` variable, thinking when it writes a thinking block (<think>, Gemma 4's thought
channel) or is gpt-oss's harmony format. A Modelfile's PARSER harmony adds tools and
thinking, as Ollama's built-in parser does.
"""

from __future__ import annotations

from typing import Any, Mapping

from pollama.template import TemplateError
from pollama.template import capabilities as go_template_capabilities
from pollama.template.gotemplate import parse_cached
from pollama.template.harmony import HARMONY_PARSER, is_harmony_chat_template
from pollama.template.thinking import jinja_thinking_tags


def model_capabilities(
    metadata: Mapping[str, Any], template: str | None, *, projector: bool = False, family: str = "",
    parser: str = "",
) -> list[str]:
    """Ollama's capability list, in its order: completion|embedding, vision, tools, insert, thinking."""
    arch = str(metadata.get("general.architecture", ""))
    embedding = metadata.get(f"{arch}.pooling_type") is not None or arch == "bert"
    caps = ["embedding" if embedding else "completion"]
    if metadata.get(f"{arch}.vision.block_count"):
        caps.append("vision")
    if embedding:
        return caps + (["vision"] if projector and "vision" not in caps else [])
    found: set[str] = set()
    if template is not None:
        try:
            found = go_template_capabilities(parse_cached(template))
        except TemplateError:
            found = set()  # a template that does not parse gives no capability; chat reports the error
    else:
        found = _jinja_capabilities(metadata.get("tokenizer.chat_template"))
    if family in ("gptoss", "gpt-oss"):
        found.add("thinking")
    if parser == HARMONY_PARSER:
        found |= {"tools", "thinking"}  # Ollama: what its built-in parser supports
    elif template is None and is_harmony_chat_template(metadata.get("tokenizer.chat_template")):
        found.add("thinking")  # llama.cpp's gpt-oss format always thinks (and parses its analysis)
    caps += [c for c in ("tools", "insert") if c in found]
    if projector and "vision" not in caps:
        caps.append("vision")
    if "thinking" in found:
        caps.append("thinking")
    return caps


def _jinja_capabilities(chat_template: Any) -> set[str]:
    if not isinstance(chat_template, str) or not chat_template:
        return set()
    from pollama.template.jinja import template_variables

    try:
        # Read off the parse tree: jinja2.meta.find_undeclared_variables would compile the
        # template, and Jinja's compiler evaluates constant expressions ({{ 'a' * 10**10 }}).
        variables = template_variables(chat_template)
    except TemplateError:
        return set()
    found = set()
    if "tools" in variables:
        found.add("tools")
    if jinja_thinking_tags(chat_template) is not None:
        found.add("thinking")
    return found
