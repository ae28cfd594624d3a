"""Ollama's prompt assembly: chat messages (or a generate request) -> the prompt string.

This is Ollama's template.Execute and server/prompt.go chatPrompt:

* collation: consecutive messages of one role (except tool) merge with a blank line, and
  .System is every system message joined by a blank line (system messages also stay in
  .Messages);
* three modes: fill-in-middle (.Prompt and .Suffix), .Messages templates rendered once,
  and legacy templates (.System/.Prompt/.Response) rendered once per finished turn, the open
  turn from a copy of the tree cut after .Response;
* images become [img-N] tags (replacing a literal [img], else prefixed) numbered from the
  first kept message;
* truncation drops the oldest non-system messages, always keeping the last one, until the
  prompt's tokens plus 768 per image fit in num_ctx.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pollama.envconfig import DEFAULT_NUM_CTX

from .gotemplate import Template, parse_cached
from .harmony import is_harmony_chat_template
from .values import TemplateMessage, template_message, template_tools

IMAGE_TOKENS = 768  # Ollama counts each image as 768 tokens when truncating
DEFAULT_TEMPLATE = "{{ .Prompt }}"

THINK_LEVELS = ("low", "medium", "high", "max")


@dataclass(frozen=True)
class Media:
    """An image of the prompt: its [img-N] number and its data as given."""

    id: int
    data: Any


def _parse(text: str) -> Template:
    return parse_cached(text)


def _as_template(template: Template | str | None) -> Template:
    if template is None:
        return _parse(DEFAULT_TEMPLATE)
    if isinstance(template, Template):
        return template
    return _parse(template)


def think_values(think: bool | str | None) -> dict:
    """The .Think, .ThinkLevel and .IsThinkSet values Ollama derives from a request's think."""
    if think is None:
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if isinstance(think, bool):
        return {"Think": think, "ThinkLevel": "medium" if think else "", "IsThinkSet": True}
    if isinstance(think, str):
        return {"Think": think in THINK_LEVELS, "ThinkLevel": think, "IsThinkSet": True}
    raise ValueError(f"think must be a bool or one of {', '.join(THINK_LEVELS)}, got {think!r}")


def collate(messages: Iterable[TemplateMessage]) -> tuple[str, list[TemplateMessage]]:
    """Ollama's collation: (system messages joined, messages with same-role runs merged)."""
    system: list[str] = []
    collated: list[TemplateMessage] = []
    for m in messages:
        if m.Role == "system":
            system.append(m.Content)
        if collated and collated[-1].Role == m.Role and m.Role != "tool":
            collated[-1].Content += "\n\n" + m.Content
        else:
            collated.append(copy.copy(m))
    return "\n\n".join(system), collated


def execute(template: Template | str | None, *, messages: list[dict] | None = None, tools: list[dict] | None = None,
            prompt: str = "", suffix: str = "", think: bool | str | None = None, force_legacy: bool = False) -> str:
    """Render a Go template on Ollama's Values, choosing the mode as Ollama's Template.Execute does."""
    tmpl = _as_template(template)
    msgs = [m if isinstance(m, TemplateMessage) else template_message(m) for m in messages or []]
    system, collated = collate(msgs)
    thinking = think_values(think)
    if prompt and suffix:
        return tmpl.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
    if not force_legacy and "messages" in tmpl.vars():
        return tmpl.execute({
            "System": system,
            "Messages": collated,
            "Tools": template_tools(tools),
            "Response": "",
            **thinking,
        })
    return _execute_legacy(tmpl, collated, thinking)


def _execute_legacy(tmpl: Template, messages: list[TemplateMessage], thinking: dict) -> str:
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl.execute({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m.Role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m.Content
        elif m.Role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m.Content
        elif m.Role == "assistant":
            turn["Response"] = m.Content
    out.append(tmpl.without_after_response().execute({**turn, **thinking}))
    return "".join(out)


def tag_images(messages: list[dict], start: int = 0) -> tuple[list[dict], list[Media]]:
    """Messages from `start` on with [img-N] tags in their content, and the images in order."""
    tagged = [dict(m) for m in messages]
    media: list[Media] = []
    for m in tagged[start:]:
        content = str(m.get("content") or "")
        prefix = ""
        for data in m.get("images") or []:
            item = Media(len(media), data)
            media.append(item)
            tag = f"[img-{item.id}]"
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        m["content"] = prefix + content
    return tagged, media


def _checked_messages(messages: list) -> list[dict]:
    """Copies of the messages with roles lower-cased, as Ollama's JSON decoding leaves them."""
    if not isinstance(messages, list):
        raise TypeError("messages must be a list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"message {i} must be an object, got {type(m).__name__}")
        out.append({**m, "role": str(m.get("role") or "").lower()})
    return out


def chat_prompt(template: Template | str | None, messages: list[dict], *, tools: list[dict] | None = None,
                think: bool | str | None = None, count_tokens: Callable[[str], int] | None = None,
                num_ctx: int = DEFAULT_NUM_CTX, truncate: bool = True,
                image_tokens: int = IMAGE_TOKENS) -> tuple[str, list[Media]]:
    """The prompt for a chat turn and its images, truncated to num_ctx as Ollama's chatPrompt does.

    `count_tokens` measures a rendered prompt (the model's tokenizer); truncation needs it.
    `image_tokens` is what one image costs (0 for a model without a vision projector).
    """
    messages = _checked_messages(messages)
    tmpl = _as_template(template)
    if truncate and count_tokens is None:
        raise ValueError("truncation needs count_tokens")
    system: list[dict] = []
    start = 0
    last = len(messages) - 1
    if truncate:
        for i in range(len(messages)):
            system = [m for m in messages[:i] if m.get("role") == "system"]
            rendered = execute(tmpl, messages=system + messages[i:], tools=tools, think=think)
            used = count_tokens(rendered)
            used += image_tokens * sum(len(m.get("images") or []) for m in messages[i:])
            if used <= num_ctx or i == last:
                start = i
                break
    tagged, media = tag_images(messages, start)
    return execute(tmpl, messages=system + tagged[start:], tools=tools, think=think), media


def generate_prompt(template: Template | str | None, prompt: str, *, system: str = "", model_system: str = "",
                    model_messages: list[dict] | None = None, suffix: str = "", images: list | None = None,
                    think: bool | str | None = None, template_override: str | None = None,
                    context: str | None = None, count_tokens: Callable[[str], int] | None = None,
                    num_ctx: int = DEFAULT_NUM_CTX, truncate: bool = True,
                    image_tokens: int = IMAGE_TOKENS) -> tuple[str, list[Media]]:
    """The prompt for /api/generate (not raw) and its images, as Ollama's GenerateHandler builds it.

    `system` is the request's, `model_system` and `model_messages` the Modelfile's SYSTEM and
    MESSAGE layers; `context` is the detokenized text of a request's (deprecated) context,
    which is prepended and makes the Modelfile messages be skipped.
    """
    tmpl = _as_template(template_override) if template_override else _as_template(template)
    images = list(images or [])
    head = context or ""
    if suffix:
        media = [Media(i, d) for i, d in enumerate(images)]
        return head + execute(tmpl, prompt=prompt, suffix=suffix, think=think), media
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": system})
    elif model_system:
        msgs.append({"role": "system", "content": model_system})
    if context is None:
        msgs.extend(model_messages or [])
    user: dict = {"role": "user", "content": prompt}
    if images:
        user["images"] = images
    msgs.append(user)
    if template_override:
        media = [Media(i, d) for i, d in enumerate(images)]
        return head + execute(tmpl, messages=msgs, think=think), media
    # As Ollama: the chat path with an empty (not absent) tool list.
    rendered, media = chat_prompt(tmpl, msgs, tools=[], think=think, count_tokens=count_tokens,
                                  num_ctx=num_ctx, truncate=truncate and count_tokens is not None,
                                  image_tokens=image_tokens)
    return head + rendered, media


def strip_leading_thinking(content: str, opening: str = "<think>", closing: str = "</think>") -> str:
    """Content without a leading thinking block (Ollama's filterThinkTags for qwen3 and deepseek-r1)."""
    body = content.lstrip()
    if not body.startswith(opening):
        # As Ollama's thinking parser fed one whole message: blank text, or text that could
        # still become the opening tag, is held back (and so dropped); anything else is content.
        return "" if opening.startswith(body) else content
    end = body.find(closing, len(opening))
    if end < 0:
        return ""
    return body[end + len(closing):].lstrip()


def filter_think_tags(messages: list[dict]) -> list[dict]:
    """Assistant messages before the last user message lose their leading <think> block."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out = []
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and i < last_user:
            m = {**m, "content": strip_leading_thinking(str(m.get("content") or ""))}
        out.append(m)
    return out


# ---------------------------------------------------------------- models without a Go template


def hf_messages(messages: list[dict]) -> list[dict]:
    """Ollama JSON messages in the form HF chat templates read (OpenAI style, arguments as objects)."""
    out = []
    for m in _checked_messages(messages):
        hf: dict = {"role": m["role"], "content": str(m.get("content") or "")}
        if m.get("thinking"):
            hf["reasoning_content"] = str(m["thinking"])
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                call = template_message({"tool_calls": [tc]}).ToolCalls[0]
                entry: dict = {"type": "function", "function": {
                    "name": call.Function.Name, "arguments": dict(call.Function.Arguments)}}
                if call.ID:
                    entry["id"] = call.ID
                calls.append(entry)
            hf["tool_calls"] = calls
        if m.get("tool_call_id"):
            hf["tool_call_id"] = str(m["tool_call_id"])
        if m.get("tool_name"):
            hf["name"] = str(m["tool_name"])
        out.append(hf)
    return out


def jinja_chat_prompt(chat_template: str, messages: list[dict], *, tools: list[dict] | None = None,
                      think: bool | str | None = None, bos_token: str = "", eos_token: str = "",
                      tokenizer_adds_bos: bool = True, count_tokens: Callable[[str], int] | None = None, num_ctx: int = DEFAULT_NUM_CTX,
                      truncate: bool = True, image_tokens: int = IMAGE_TOKENS) -> tuple[str, list[Media]]:
    """The prompt from the model's own HF chat_template (sandboxed), truncated as chat_prompt truncates.

    This is the path Ollama takes (through llama-server) for a model without a Go template:
    add_generation_prompt is on, `think` becomes enable_thinking (and reasoning_effort for a
    level). A leading BOS written by the template is removed when `tokenizer_adds_bos` says the
    tokenizer adds BOS to every prompt (else it would be there twice); when the tokenizer does
    not add it (SmolLM2: BOS is <|im_start|>, add_bos false) the template's text stays.
    """
    from .jinja import compile_chat_template

    compiled = compile_chat_template(chat_template)
    messages = _checked_messages(messages)
    extra: dict = {}
    if think is not None:
        extra["enable_thinking"] = think_values(think)["Think"]
        if isinstance(think, str) and think:
            extra["reasoning_effort"] = think

    harmony = is_harmony_chat_template(chat_template)

    def render(msgs: list[dict]) -> str:
        hf = hf_messages(msgs)
        if harmony:
            # As llama.cpp prepares messages for gpt-oss's template, which refuses a call with
            # both content and thinking: a call's thinking stands for its content.
            hf = [{k: v for k, v in m.items() if k != "content"} if m.get("tool_calls") and m.get("reasoning_content")
                  else m for m in hf]
        text = compiled.render(hf, tools=tools, add_generation_prompt=True,
                               bos_token=bos_token, eos_token=eos_token, **extra)
        if tokenizer_adds_bos and bos_token and text.startswith(bos_token):
            text = text[len(bos_token):]
        return text

    if truncate and count_tokens is None:
        raise ValueError("truncation needs count_tokens")
    system: list[dict] = []
    start = 0
    if truncate:
        for i in range(len(messages)):
            system = [m for m in messages[:i] if m.get("role") == "system"]
            used = count_tokens(render(system + messages[i:]))
            used += image_tokens * sum(len(m.get("images") or []) for m in messages[i:])
            if used <= num_ctx or i == len(messages) - 1:
                start = i
                break
    tagged, media = tag_images(messages, start)
    return render(system + tagged[start:]), media
