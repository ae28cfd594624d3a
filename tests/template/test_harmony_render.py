"""gpt-oss's own chat template renders through pollama as transformers renders it.

data/gpt_oss_chat_template.jinja is the chat template of openai/gpt-oss-20b and -120b (their
chat_template.jinja, which their GGUFs carry as tokenizer.chat_template), byte for byte as
llama.cpp keeps it in models/templates/openai-gpt-oss-120b.jinja.

Ours is the whole path a chat takes for a model without a Go template (Ollama's JSON messages
and `think` -> jinja_chat_prompt); the reference is transformers' apply_chat_template on the
same conversation in HF's form, with the arguments Ollama hands llama-server for such a model:
enable_thinking, and reasoning_effort when `think` is a level (true leaves the template's
default, "medium").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
import transformers

from pollama.template.harmony import is_harmony_chat_template
from pollama.template.prompt import jinja_chat_prompt

TEMPLATE = (Path(__file__).parent / "data" / "gpt_oss_chat_template.jinja").read_text(encoding="utf-8")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer"}, "hourly": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "now", "description": "The time now", "parameters": {}}}
TOOLS = [WEATHER, NO_PARAMS]

CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}

# (name, Ollama messages, the same in HF's form)
CONVERSATIONS = [
    ("user only", [{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hi"}]),
    ("system becomes the developer's instructions",
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
    ("developer message",
     [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
     [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]),
    ("earlier turns: their thinking is dropped",
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "thinking": "greet"},
      {"role": "user", "content": "And you?"}],
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "thinking": "greet"},
      {"role": "user", "content": "And you?"}]),
    ("a tool call with its thinking, then its result",
     [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "thinking": "Need the tool.", "tool_calls": [CALL]},
      {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"}],
     [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "thinking": "Need the tool.", "tool_calls": [
          {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
      {"role": "tool", "content": '{"temp": 21}'}]),
    ("a tool round trip answered: the call's thinking is dropped",
     [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "thinking": "Need the tool.", "tool_calls": [CALL]},
      {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
      {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks"}],
     [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "thinking": "Need the tool.", "tool_calls": [
          {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
      {"role": "tool", "content": "sunny"},
      {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks"}]),
]


def hf_render(messages, **kwargs) -> str:
    """transformers' apply_chat_template with the gpt-oss template, on a word-level tokenizer built offline."""
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>")),
        unk_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.chat_template = TEMPLATE
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def llama_server_kwargs(think):
    """The template arguments Ollama sends llama-server for `think` (llamaServerChatTemplateKwargs)."""
    if think is None:
        return {}
    kwargs = {"enable_thinking": think is True or think in ("low", "medium", "high", "max")}
    if isinstance(think, str):
        kwargs["reasoning_effort"] = think
    return kwargs


@pytest.mark.parametrize("think", [None, True, False, "low", "medium", "high"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no tools", "tools"])
@pytest.mark.parametrize("name", [c[0] for c in CONVERSATIONS])
def test_gpt_oss_template_renders_as_transformers(name, tools, think):
    _, ollama_messages, hf_messages = next(c for c in CONVERSATIONS if c[0] == name)
    ours, _ = jinja_chat_prompt(TEMPLATE, ollama_messages, tools=tools, think=think, truncate=False)
    theirs = hf_render(hf_messages, tools=tools, **llama_server_kwargs(think))
    assert ours == theirs
    effort = think if isinstance(think, str) else "medium"
    assert f"Reasoning: {effort}\n" in ours and ours.endswith("<|start|>assistant")
    assert ("namespace functions {" in ours) == bool(tools)


def test_a_call_with_content_and_thinking_renders_as_llama_cpp_renders_it():
    # gpt-oss's template refuses a call message with both; llama.cpp (Ollama's renderer for a
    # GGUF without a Go template) drops the content when there is thinking.
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Let me check.", "thinking": "Need the tool.", "tool_calls": [CALL]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    ours, _ = jinja_chat_prompt(TEMPLATE, messages, tools=TOOLS, think=True, truncate=False)
    theirs = hf_render([messages[0], {"role": "assistant", "thinking": "Need the tool.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "sunny"}], tools=TOOLS, enable_thinking=True)
    assert ours == theirs and "Let me check." not in ours


def test_the_rendered_calls_and_results_are_harmony():
    ours, _ = jinja_chat_prompt(TEMPLATE, CONVERSATIONS[4][1], tools=TOOLS, think=True, truncate=False)
    assert ("<|start|>assistant<|channel|>analysis<|message|>Need the tool.<|end|>"
            '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris", "days": 2}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"{\\"temp\\": 21}"<|end|>'
            "<|start|>assistant") in ours
    assert "type get_weather = (_: {\n// The city\ncity: string,\n" in ours
    assert is_harmony_chat_template(TEMPLATE)
