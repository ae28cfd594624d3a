"""Gemma 3."""
from pollama.models.gemma3.model import Gemma3  # noqa: F401
