"""Llama."""
from pollama.models.llama.model import Llama  # noqa: F401
