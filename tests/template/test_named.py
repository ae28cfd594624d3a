"""The built-in named templates render the golden prompts of ../shared/testdata/templates."""

from __future__ import annotations

import pytest
from template_goldens import (
    CONVERSATIONS,
    golden_expected,
    golden_matches,
    golden_names,
)

from pollama.template.named import all_named, named_template, names

GOLDEN = golden_names()


def _render(name: str, messages: list[dict]) -> str:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    data = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
            "Response": ""}
    return named_template(name).parse().execute(data)


def test_every_golden_format_has_a_named_template(golden_dir):
    assert set(GOLDEN) <= set(names())


@pytest.mark.parametrize("name", GOLDEN or ["<absent>"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_named_template_renders_golden(golden_dir, name, conversation):
    rendered = _render(name, CONVERSATIONS[conversation])
    expected = golden_expected(name, conversation)
    assert golden_matches(name, rendered, expected), f"{name}/{conversation}:\n{rendered!r}\n!=\n{expected!r}"


def test_every_named_template_parses_and_uses_messages():
    for t in all_named():
        tmpl = t.parse()
        assert "messages" in tmpl.vars(), t.name
        assert tmpl.execute({"Messages": [{"Role": "user", "Content": "hi"}], "System": "", "Response": ""})


def test_params_are_stop_lists():
    for t in all_named():
        stop = t.params.get("stop", [])
        assert isinstance(stop, list) and all(isinstance(s, str) and s for s in stop), t.name
    assert named_template("chatml").params["stop"] == ["<|im_start|>", "<|im_end|>"]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(KeyError, match="no built-in template named 'nope'"):
        named_template("nope")


def test_system_messages_join_before_the_next_turn():
    # Several system messages are joined by a blank line, as Ollama's collation does.
    msgs = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "q"}]
    assert _render("alpaca", msgs) == "A\n\nB\n\n### Instruction:\nq\n\n### Response:\n"
    assert _render("vicuna", msgs) == "A\n\nB\n\nUSER: q\nASSISTANT:"


def test_gemma3_system_opens_first_user_turn():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert _render("gemma3-instruct", msgs) == (
        "<start_of_turn>user\nS\n\nq1<end_of_turn>\n<start_of_turn>model\na1<end_of_turn>\n"
        "<start_of_turn>user\nq2<end_of_turn>\n<start_of_turn>model\n"
    )


# Formats without golden files here: the expected prompts are written from each model's
# documented prompt format, for the conversation system S, user Q1, assistant A1, user Q2.
SHORT = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
DOCUMENTED = {
    "openchat": "GPT4 Correct System: S<|end_of_turn|>GPT4 Correct User: Q1<|end_of_turn|>"
                "GPT4 Correct Assistant: A1<|end_of_turn|>GPT4 Correct User: Q2<|end_of_turn|>GPT4 Correct Assistant:",
    "starcoder2-instruct": "S\n\n### Instruction\nQ1\n\n### Response\nA1<|endoftext|>\n\n### Instruction\nQ2\n\n### Response\n",
    "magicoder": "S\n\n@@ Instruction\nQ1\n\n@@ Response\nA1\n\n@@ Instruction\nQ2\n\n@@ Response\n",
    "falcon-instruct": "System: S\nUser:\nQ1\nFalcon:\nA1\nUser:\nQ2\nFalcon:\n",
    "granite-instruct": "System:\nS\n\nQuestion:\nQ1\n\nAnswer:\nA1\n\nQuestion:\nQ2\n\nAnswer:\n",
    "solar-instruct": "### System:\nS\n\n### User:\nQ1\n\n### Assistant:\nA1</s>\n\n### User:\nQ2\n\n### Assistant:\n",
    "codellama-70b-instruct": "Source: system\n\n S <step> Source: user\n\n Q1 <step> Source: assistant\n\n A1 <step> "
                              "Source: user\n\n Q2 <step> Source: assistant\nDestination: user\n\n ",
    "chatqa": "System: S\n\nUser: Q1\n\nAssistant: A1\n\nUser: Q2\n\nAssistant:",
    "alfred": "<start_system>S<end_message><start_user>Q1<end_message><start_assistant>A1<end_message>"
              "<start_user>Q2<end_message><start_assistant>",
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
              "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_formats(name):
    assert _render(name, SHORT) == DOCUMENTED[name]


def test_all_twenty_ollama_names_present():
    assert set(names()) == {
        "alfred", "alpaca", "chatml", "chatqa", "codellama-70b-instruct", "command-r", "falcon-instruct",
        "gemma-instruct", "gemma3-instruct", "granite-instruct", "llama2-chat", "llama3-instruct", "magicoder",
        "mistral-instruct", "openchat", "phi-3", "solar-instruct", "starcoder2-instruct", "vicuna", "zephyr",
    }
