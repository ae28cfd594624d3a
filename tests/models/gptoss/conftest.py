"""The tiny MXFP4 gpt-oss checkpoint both test modules use, built once per session (tiny.py)."""

from models.gptoss.tiny import gptoss_case  # noqa: F401
