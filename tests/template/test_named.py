"""The built-in named templates render the golden prompts of ../shared/testdata/templates."""

from __future__ import annotations

import pytest

from pollama.template.named import all_named, named_template, names
from template_goldens import CONVERSATIONS, golden_expected, golden_matches, golden_names

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
