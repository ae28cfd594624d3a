"""Template tests import their shared data module (template_goldens) from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from template_goldens import require_goldens


@pytest.fixture
def golden_dir() -> Path:
    """The golden template folder, or skip saying where it should be."""
    return require_goldens()
