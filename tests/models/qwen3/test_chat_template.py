"""Qwen3's own chat template through pollama: rendered as transformers renders it (enable_thinking
on, off, unset; tools; reasoning in the history), its capabilities read off it, kept as the
model's template by `create` (no built-in template renders like it), and the answer it leads to
split into thinking and content by the one thinking parser."""

from __future__ import annotations

import pytest
from models.qwen3.chat_template import QWEN3_CHAT_TEMPLATE

from pollama.create.capabilities import model_capabilities
from pollama.template.detect import detect_named
from pollama.template.jinja import render_chat_template
from pollama.template.output import ChatOutputParser
from pollama.template.prompt import jinja_chat_prompt

import transformers
import tokenizers

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERSATIONS = {
    "one-turn": ([{"role": "user", "content": "Hi"}], None),
    "system-history": ([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhello?\n</think>\n\nHello."},  # its tags in the content
        {"role": "user", "content": "And now?"},
    ], None),
    "reasoning-field": ([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
    ], None),
    "tools": ([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
    ], [WEATHER]),
}


def hf_render(messages, **kwargs) -> str:
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]")
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


@pytest.mark.parametrize("enable_thinking", [None, True, False], ids=["unset", "on", "off"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_renders_as_transformers(name, enable_thinking):
    messages, tools = CONVERSATIONS[name]
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    for generation_prompt in (False, True):
        want = hf_render(messages, tools=tools, add_generation_prompt=generation_prompt, **extra)
        got = render_chat_template(QWEN3_CHAT_TEMPLATE, messages, tools=tools,
                                   add_generation_prompt=generation_prompt, **extra)
        assert got == want


def test_capabilities_and_no_builtin_template():
    metadata = {"general.architecture": "qwen3", "tokenizer.chat_template": QWEN3_CHAT_TEMPLATE}
    assert model_capabilities(metadata, None) == ["completion", "tools", "thinking"]
    # ChatML renders the plain turns alike, but not the tools: the model keeps its own template.
    assert detect_named(QWEN3_CHAT_TEMPLATE, eos_token="<|im_end|>") is None


def prompt(think) -> str:
    text, _ = jinja_chat_prompt(QWEN3_CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}], think=think,
                                truncate=False)
    return text


def test_think_drives_enable_thinking():
    head = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # A request's think: true is enable_thinking true (the model opens its own block), as is a
    # level; think: false writes the empty block Qwen3 is trained to answer after.
    assert prompt(True) == prompt("high") == prompt(None) == head
    assert prompt(False) == head + "<think>\n\n</think>\n\n"
    assert prompt(False) == hf_render([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                      enable_thinking=False)


def split(think, pieces) -> tuple[str, str]:
    parser = ChatOutputParser(None, think=think, prompt=prompt(think), chat_template=QWEN3_CHAT_TEMPLATE)
    deltas = [parser.add(piece) for piece in pieces] + [parser.finish()]
    return "".join(d["thinking"] for d in deltas), "".join(d["content"] for d in deltas)


def test_answer_split_into_thinking_and_content():
    pieces = ["<think>", "\nThe user", " greets.\n", "</", "think>", "\n\n", "Hello", "!"]
    assert split(True, pieces) == ("The user greets.\n", "Hello!")
    # With thinking off the prompt closed the block: all the model writes is content.
    assert split(False, ["Hello", "!"]) == ("", "Hello!")
