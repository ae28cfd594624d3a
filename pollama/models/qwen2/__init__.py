"""Qwen2."""
from pollama.models.qwen2.model import Qwen2  # noqa: F401
