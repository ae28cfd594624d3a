"""Layers built from ml/ ops: Linear, Embedding, norms, RoPE parameters, attention."""

from pollama.nn.modules import (  # noqa: F401
    Embedding,
    LayerNorm,
    Linear,
    RMSNorm,
    RopeScaling,
    Weights,
    attend,
    attention,
    attention_shared,
    make_rope,
)
from pollama.nn.loader import Module, load_weights  # noqa: F401
