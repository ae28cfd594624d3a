"""Helpers shared by tests: where ../shared lives, and the real models installed from PyPI."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LLAMACPP_REFERENCE = SHARED / "reference" / "llamacpp-shared.json"

# Embedded model name -> its key in llamacpp-shared.json.
REFERENCE_MODELS = {
    "smollm2": "smollm2-135m-instruct-q4_1",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "gemma3-270m": "gemma3-270m-q4_k_m",
}


def real_model(name: str) -> Path:
    """Path of an installed real model, or skip the test saying how to install it."""
    from pollama.store.embedded import embedded_model_path

    try:
        return embedded_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))
