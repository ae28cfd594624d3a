"""Mistral 3 (Mistral Small 3.1, Pixtral vision)."""
from pollama.models.mistral3.model import Mistral3  # noqa: F401
