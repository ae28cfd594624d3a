"""Shared test fixtures."""

from __future__ import annotations

import json

import pytest

from realmodels import LLAMACPP_REFERENCE


@pytest.fixture(scope="session")
def llamacpp_reference() -> dict:
    """llama.cpp's outputs on the real models (../shared/reference/llamacpp-shared.json)."""
    if not LLAMACPP_REFERENCE.is_file():
        pytest.skip(f"{LLAMACPP_REFERENCE} is absent")
    return json.loads(LLAMACPP_REFERENCE.read_text())
