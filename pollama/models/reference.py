"""How a vision-language model's transformers reference lines up with what we record, for
`pollama compare --image` (pollama/debug/vision.py). Each vision architecture's folder gives its
own in `reference.py`: ADAPTERS, by transformers class name (models/discovery.py finds them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class VisionAdapter:
    """Where one transformers VLM keeps what we record, and how to call it."""

    # Dotted path of the language model's layer list, and of its final norm: where every
    # transformers 5 VLM (Gemma 3, Llama 3.2 Vision, Mistral 3, Qwen2-VL) keeps them.
    text_layers: str = "model.language_model.layers"
    text_norm: str = "model.language_model.norm"
    # Our name -> (dotted path of a module, its output -> our [rows, ...] array)
    modules: dict[str, str] = field(default_factory=dict)
    # Our name prefix (as "v.blk") -> dotted path of a vision layer list
    vision_layers: dict[str, str] = field(default_factory=dict)
    # (model, token ids, our prepared image or None for a text-only prompt) -> model.forward's keyword arguments
    inputs: Callable[[Any, Sequence[int], Any], dict] | None = None
    # (our name, the hooked module's first output, model, prepared image) -> our array
    rows: Callable[[str, Any, Any, Any], np.ndarray] | None = None


def batch_of_one(name: str, output, model, prepared) -> np.ndarray:
    """A [1, rows, dim] output as [rows, dim] (any other as it is)."""
    array = output.detach().float().numpy()
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array
