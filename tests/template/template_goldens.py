"""Shared data for template tests: the golden renders in ../shared/testdata/templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from realmodels import SHARED

GOLDEN_DIR = SHARED / "testdata" / "templates"

# The conversations of ../shared/testdata/README.md (Ollama's template tests).
USER = [{"role": "user", "content": "Hello, how are you?"}]
USER_ASSISTANT_USER = USER + [
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]
SYSTEM_USER_ASSISTANT_USER = [{"role": "system", "content": "You are a helpful assistant."}] + USER_ASSISTANT_USER
CONVERSATIONS = {
    "user": USER,
    "user-assistant-user": USER_ASSISTANT_USER,
    "system-user-assistant-user": SYSTEM_USER_ASSISTANT_USER,
}
# For these the README drops one trailing space at the very end of the render before comparing.
TRAILING_SPACE_DROPPED = {"llama2-chat", "mistral-instruct", "vicuna"}


def golden_names() -> list[str]:
    """Names of the golden template folders (empty when the data is absent)."""
    if not GOLDEN_DIR.is_dir():
        return []
    return sorted(p.name for p in GOLDEN_DIR.iterdir() if (p / "template.gotmpl").is_file())


def golden_expected(name: str, conversation: str) -> str:
    """The expected render of `conversation` for the golden template `name`."""
    return (GOLDEN_DIR / name / conversation).read_text(encoding="utf-8")


def golden_matches(name: str, rendered: str, expected: str) -> bool:
    """Compare as the README says (one trailing space dropped for three formats)."""
    if name in TRAILING_SPACE_DROPPED and rendered.endswith(" "):
        rendered = rendered[:-1]
    return rendered == expected


def require_goldens() -> Path:
    """The golden template folder, or skip saying where it should be."""
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"golden templates absent: {GOLDEN_DIR} (see ../shared/testdata/README.md)")
    return GOLDEN_DIR
