"""Mistral (as its own architecture: Llama with sliding-window attention)."""
from pollama.models.mistral.model import Mistral  # noqa: F401
