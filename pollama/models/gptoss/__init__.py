"""gpt-oss."""
from pollama.models.gptoss.model import GptOss  # noqa: F401
