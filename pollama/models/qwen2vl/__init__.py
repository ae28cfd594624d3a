"""Qwen2-VL and Qwen2.5-VL."""
from pollama.models.qwen2vl.model import Qwen2VL, Qwen25VL  # noqa: F401
