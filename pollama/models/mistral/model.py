"""Mistral 7B (Jiang et al. 2023): Llama's decoder with sliding-window attention.

Each token attends to the last `window` positions only, itself included (token i sees j when
0 <= i - j < window), in every layer. Mistral 7B v0.1 was trained with a window of 4096 in
a context of 32768; later Mistral models set none, and are then exactly Llama.

GGUF "mistral" is pollama's own architecture name: Ollama and llama.cpp run Mistral as "llama",
which attends to the whole context (so they differ from the paper past the window), and
`pollama create` writes "llama" too, so that its files run there. models/mistral/convert.py
writes this one when asked (docs/adding-a-model.md explains the choice).
"""

from __future__ import annotations

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import N_KV_PAD, KVCache, LayerCaches, pages_for
from pollama.ml.base import Backend
from pollama.models.base import Config, register
from pollama.models.llama.model import Llama
from pollama.nn import Weights


@register("mistral")
class Mistral(Llama):
    # Weights, RoPE (Q/K stored permuted for adjacent pairs, as Llama's) and forward are
    # Llama's; only the cache differs: it forgets what falls out of the window.

    def __init__(self, cfg: Config, w: Weights):
        super().__init__(cfg, w)
        self.window = cfg.int("attention.sliding_window", 0) or None  # 0 or absent: whole context

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        """Every layer sees the window: cells for it and one batch (the whole context without one)."""
        if self.window is None or self.window >= n_ctx:
            return super().new_cache(backend, n_ctx, n_batch, n_seq, dtype)
        # The live positions (the window before a batch, and the batch) can straddle one more
        # page than they fill.
        cells = (pages_for(min(n_ctx, self.window + n_batch)) + N_KV_PAD) * n_seq
        layers = range(self.n_layers)
        return LayerCaches([KVCache(backend, layers, cells, self.k_width, self.v_width, window=self.window, dtype=dtype)])
