"""Qwen3 and Qwen3-MoE (GGUF general.architecture "qwen3", "qwen3moe")."""
from pollama.models.qwen3.model import Qwen3, Qwen3Moe  # noqa: F401
