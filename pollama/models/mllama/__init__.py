"""Llama 3.2 Vision (mllama)."""
from pollama.models.mllama.model import Mllama  # noqa: F401
