"""Gemma 4 (text)."""
from pollama.models.gemma4.model import Gemma4  # noqa: F401
