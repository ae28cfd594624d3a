"""Gemma 4's own chat template (the one in llama.cpp's ggml-vocab-gemma-4.gguf, as Google ships it):
its capabilities, its prompts with and without thinking, and its thought channel read back."""

from __future__ import annotations

import pytest

from realmodels import llamacpp_vocab
from pollama.create.capabilities import model_capabilities
from pollama.fs.gguf import GGUFFile
from pollama.template.output import ChatOutputParser
from pollama.template.prompt import jinja_chat_prompt

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def metadata() -> dict:
    with GGUFFile(llamacpp_vocab("gemma-4")) as f:
        return dict(f.metadata)


def test_capabilities(metadata):
    # No Go template: the Jinja template speaks, with tools and a thought channel.
    assert model_capabilities(metadata, None) == ["completion", "tools", "thinking"]


def test_prompt_with_and_without_thinking(metadata):
    template = metadata["tokenizer.chat_template"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    thinking, _ = jinja_chat_prompt(template, messages, think=True, bos_token="<bos>", truncate=False)
    assert thinking == "<|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    plain, _ = jinja_chat_prompt(template, messages, think=False, bos_token="<bos>", truncate=False)
    # Without thinking the template closes an empty thought channel for the model.
    assert plain == ("<|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n"
                     "<|turn>model\n<|channel>thought\n<channel|>")
    with_tools, _ = jinja_chat_prompt(template, messages, tools=TOOLS, think=False, bos_token="<bos>", truncate=False)
    assert "<|tool>declaration:get_weather{description:<|\"|>Weather of a city<|\"|>" in with_tools


def test_thought_channel_is_thinking(metadata):
    template = metadata["tokenizer.chat_template"]
    prompt, _ = jinja_chat_prompt(template, [{"role": "user", "content": "Hi"}], think=True, truncate=False)
    parser = ChatOutputParser(None, think=True, prompt=prompt, chat_template=template)
    out = [parser.add(p) for p in ["<|channel>", "thought\nThe user", " greets.<chan", "nel|>Hello", " there!"]]
    out.append(parser.finish())
    assert "".join(d["thinking"] for d in out) == "The user greets."
    assert "".join(d["content"] for d in out) == "Hello there!"


def test_tool_calls_in_gemma_notation(metadata):
    template = metadata["tokenizer.chat_template"]
    # What the template writes for an earlier call is what the model writes for a new one.
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "hourly": False,
                                                              "at": {"lat": 48.9, "tags": ["a", "b"]}}}}
    rendered, _ = jinja_chat_prompt(template, [{"role": "user", "content": "Weather?"},
                                               {"role": "assistant", "content": "", "tool_calls": [call]},
                                               {"role": "user", "content": "Thanks"}],
                                    tools=TOOLS, think=False, truncate=False)
    start = rendered.index("<|tool_call>")
    written = rendered[start: rendered.index("<tool_call|>") + len("<tool_call|>")]
    assert written == ('<|tool_call>call:get_weather{at:{lat:48.9,tags:[<|"|>a<|"|>,<|"|>b<|"|>]},'
                       'city:<|"|>Paris<|"|>,days:3,hourly:false}<tool_call|>')

    parser = ChatOutputParser(None, tools=TOOLS, think=False, chat_template=template, new_id=lambda: "call_1")
    answer = "Let me look." + written + "Done."
    out = [parser.add(answer[i: i + 5]) for i in range(0, len(answer), 5)]
    out.append(parser.finish())
    assert "".join(d["content"] for d in out) == "Let me look.Done."
    calls = [c for d in out for c in d["tool_calls"]]
    assert calls == [{"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                                   "arguments": call["function"]["arguments"]}}]
    # A call of a tool the request did not offer, or one cut off, stays text.
    other = ChatOutputParser(None, tools=TOOLS, think=False, chat_template=template)
    text = "<|tool_call>call:rm{path:<|\"|>/<|\"|>}<tool_call|><|tool_call>call:get_weather{city:"
    got = [other.add(text), other.finish()]
    assert "".join(d["content"] for d in got) == text and not [c for d in got for c in d["tool_calls"]]
