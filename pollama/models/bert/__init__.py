"""BERT: encoder-only embedding models (all-MiniLM, bge, ...)."""
from pollama.models.bert.model import Bert, Pooling  # noqa: F401
