"""KV caches for the text models."""

from pollama.kvcache.cache import Batch, CacheFullError, KVCache, LayerCaches, StepPlan  # noqa: F401
