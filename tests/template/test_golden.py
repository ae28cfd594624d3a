"""The golden templates of ../shared/testdata/templates render their expected prompts."""

from __future__ import annotations

import pytest
from template_goldens import (
    CONVERSATIONS,
    GOLDEN_DIR,
    golden_expected,
    golden_matches,
    golden_names,
)

from pollama.template.gotemplate import Template

NAMES = golden_names()


def _go_messages(messages: list[dict]) -> list[dict]:
    return [{"Role": m["role"], "Content": m["content"]} for m in messages]


def test_golden_data_present(golden_dir):
    assert len(NAMES) >= 10, f"expected the 10 golden formats in {golden_dir}"


@pytest.mark.parametrize("name", NAMES or ["<absent>"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_golden_render(golden_dir, name, conversation):
    tmpl = Template.parse((GOLDEN_DIR / name / "template.gotmpl").read_text(encoding="utf-8"))
    messages = CONVERSATIONS[conversation]
    # The data as Ollama's Execute passes it in .Messages mode: .System is every system message
    # joined (command-r reads it), no .Prompt and no .Tools.
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rendered = tmpl.execute({"System": system, "Messages": _go_messages(messages), "Response": ""})
    expected = golden_expected(name, conversation)
    assert golden_matches(name, rendered, expected), f"{name}/{conversation}:\n{rendered!r}\n!=\n{expected!r}"
