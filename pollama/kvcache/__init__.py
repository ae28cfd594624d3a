"""KV caches for the text models."""

from pollama.kvcache.cache import KV_READ_PAD, N_KV_PAD, KVCache, LayerCaches, StepPlan, pages_for  # noqa: F401
