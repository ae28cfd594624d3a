"""nn.Module: weights declared as attributes named as in GGUF, read by one loader walking them."""

from __future__ import annotations

from typing import Annotated, Optional

import pytest

from pollama.ml.base import Tensor
from pollama.errors import ModelError
from pollama.nn import LayerNorm, Linear, Module, RMSNorm, Weights, load_weights


class FakeTensor:
    def __init__(self, name: str, shape=(4, 2)):
        self.name, self.shape = name, shape


def weights(*names: str) -> Weights:
    return Weights({n: FakeTensor(n) for n in names}, "test.gguf")


class Mlp(Module):
    fc1: Annotated[Linear, "mlp.fc1"]
    gate: Optional[Tensor]


class Layer(Module):
    attn_norm: RMSNorm
    attn_q: Linear
    ln: Optional[LayerNorm]
    mlp: Mlp
    n_heads: int  # not a weight: not walked


def test_attributes_are_read_by_their_gguf_names_under_the_prefix():
    w = weights("blk.1.attn_norm.weight", "blk.1.attn_q.weight", "blk.1.attn_q.bias", "blk.1.mlp.mlp.fc1.weight",
                "blk.1.mlp.gate")
    layer = Layer.load(w, "blk.1", eps=1e-5)
    assert layer.attn_norm.weight.name == "blk.1.attn_norm.weight" and layer.attn_norm.eps == 1e-5
    assert layer.attn_q.weight.name == "blk.1.attn_q.weight" and layer.attn_q.bias.name == "blk.1.attn_q.bias"
    assert layer.ln is None  # optional and absent
    assert layer.mlp.fc1.weight.name == "blk.1.mlp.mlp.fc1.weight" and layer.mlp.fc1.bias is None
    assert layer.mlp.gate.name == "blk.1.mlp.gate"  # a Tensor is the exact name, no .weight
    assert not hasattr(layer, "n_heads")


def test_a_missing_weight_is_a_model_error_naming_it():
    with pytest.raises(ModelError, match=r"test.gguf: missing tensor 'blk.0.attn_q.weight'"):
        Layer.load(weights("blk.0.attn_norm.weight", "blk.0.mlp.mlp.fc1.weight"), "blk.0", eps=1e-5)


def test_attributes_already_set_are_left_alone_and_lists_must_be_built():
    class Model(Module):
        blk: list[Layer]
        output_norm: RMSNorm
        output: Optional[Linear]

    model = Model()
    with pytest.raises(TypeError, match="blk is a list"):
        load_weights(model, weights("output_norm.weight"), eps=1e-6)
    model.blk = []
    model.output_norm = "chosen by the constructor"
    load_weights(model, weights(), eps=1e-6)
    assert model.output_norm == "chosen by the constructor" and model.output is None
