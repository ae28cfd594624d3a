"""Weights declared as typed attributes named as in GGUF, and the one loader that walks them.

A module lists its weights as annotations, each attribute named after its GGUF tensor:

    class Block(Module):
        attn_norm: RMSNorm             # blk.N.attn_norm.weight
        attn_q: Linear                 # blk.N.attn_q.weight (and .bias when the file has one)
        attn_gate: Optional[Tensor]    # blk.N.attn_gate, None when the file lacks it
        fc1: Annotated[Linear, "mlp.fc1"]  # a GGUF name that is no Python name

`Block.load(weights, "blk.3", eps=eps)` builds one with every weight under `blk.3.`, as
Ollama's `gguf:"attn_q"` tags and tinygrad's load_state_dict do: no mapping table. Keyword
hyper-parameters reach every layer that takes them (a norm's `eps`). Attributes already set
when the walk starts are left alone: that is how a constructor builds a list of layers (its
length is a hyper-parameter) or chooses a layer's class, then lets `load_weights` fill the rest.
Annotations of other types (`n_layers: int`) are not weights and are not walked.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Union

from pollama.ml.base import Tensor
from pollama.nn.modules import Embedding, ExpertLinear, LayerNorm, Linear, RMSNorm, Weights

# Layers made from `<name>.weight` (and their own optional parts): each has load(weights, name, **hp).
LAYERS = (Linear, ExpertLinear, Embedding, RMSNorm, LayerNorm)


class Module:
    """A group of weights under one GGUF prefix, declared by annotated attributes (see above)."""

    @classmethod
    def load(cls, weights: Weights, prefix: str = "", **hp: Any):
        """An instance with every declared weight read from `weights` under `prefix`."""
        module = cls.__new__(cls)
        load_weights(module, weights, prefix, **hp)
        return module


def load_weights(obj: object, weights: Weights, prefix: str = "", **hp: Any) -> None:
    """Set each declared weight of `obj` that is not set yet (a missing one: ModelError naming it)."""
    for attr, (kind, name, optional) in _fields(type(obj)).items():
        if attr in obj.__dict__:
            continue
        full = f"{prefix}.{name}" if prefix else name
        if kind is list:
            raise TypeError(f"{type(obj).__name__}.{attr} is a list: build it (its length is a hyper-parameter) "
                            "before load_weights")
        if optional and not _present(kind, weights, full):
            setattr(obj, attr, None)
        elif kind is Tensor:
            setattr(obj, attr, weights[full])
        else:  # a layer or a Module: it reads its own parts under `full`
            setattr(obj, attr, kind.load(weights, full, **hp))


def _present(kind: type, weights: Weights, name: str) -> bool:
    if kind is Tensor:
        return name in weights
    if issubclass(kind, Module):
        return any(key.startswith(f"{name}.") for key in weights.tensors)
    return f"{name}.weight" in weights


@functools.cache
def _fields(cls: type) -> dict[str, tuple[type, str, bool]]:
    # attribute -> (what it loads: Tensor, a layer, a Module subclass or list; its GGUF name; optional)
    fields = {}
    for attr, hint in typing.get_type_hints(cls, include_extras=True).items():
        name = attr
        if typing.get_origin(hint) is Annotated:
            hint, *extra = typing.get_args(hint)
            name = next((e for e in extra if isinstance(e, str)), attr)
        optional = False
        if typing.get_origin(hint) in (Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                continue
            hint = args[0]
        if typing.get_origin(hint) is list:
            item = typing.get_args(hint)[0] if typing.get_args(hint) else None
            items = typing.get_args(item) if typing.get_origin(item) in (Union, types.UnionType) else (item,)
            if all(_is_weight(i) for i in items):
                fields[attr] = (list, name, optional)
            continue
        if _is_weight(hint):
            fields[attr] = (hint, name, optional)
    return fields


def _is_weight(hint: Any) -> bool:
    return isinstance(hint, type) and (hint is Tensor or issubclass(hint, (Module, *LAYERS)))


