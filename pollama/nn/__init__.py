"""Layers built from ml/ ops: Linear, Embedding, norms, RoPE parameters, attention; and Batch,
the input of a model's forward."""

from pollama.nn.batch import Batch  # noqa: F401

from pollama.nn.modules import (  # noqa: F401
    Embedding,
    ExpertLinear,
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
from pollama.nn.moe import (  # noqa: F401
    RoutedExperts,
    softmax_then_top_k,
    top_k_then_softmax,
)
