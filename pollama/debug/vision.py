"""The reference side for vision-language models: transformers' model on our prompt and our pixels.

Our preprocessing is proven bitwise equal to transformers' image processors
(tests/models/test_image_processing.py), so the reference is given the very image our model
prepared, and the prompt's token ids our model laid out. Each architecture's adapter knows
where transformers keeps the layers, which extra inputs its forward needs, and how its
vision tensors line up with ours (rows in our order, no batch dim):

    v.embd             the vision tower's input to its first layer (patches + positions)
    v.blk.N.out        vision layer N's output (v.global.blk.N.out: mllama's global layers)
    v.post_layernorm   the tower's final norm (Gemma 3's SigLIP)
    mm.out             the projector's output: the rows the text model reads
    token_embd         the text model's first layer's input, image rows in place
    blk.N.out, output_norm, logits   as for text models
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class VisionAdapter:
    """Where one transformers VLM keeps what we record, and how to call it."""

    text_layers: str  # dotted path of the language model's layer list
    text_norm: str  # its final norm
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


def _gemma3_inputs(model, tokens: Sequence[int], pixels: np.ndarray | None) -> dict:
    import torch

    ids = torch.tensor([list(tokens)], dtype=torch.long)
    if pixels is None:
        return {"input_ids": ids}
    image_token = model.config.image_token_id
    return {"input_ids": ids, "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels))[None],
            "token_type_ids": (ids == image_token).long()}


ADAPTERS: dict[str, VisionAdapter] = {
    "Gemma3ForConditionalGeneration": VisionAdapter(
        text_layers="model.language_model.layers",
        text_norm="model.language_model.norm",
        modules={"v.embd": "model.vision_tower.embeddings", "v.post_layernorm": "model.vision_tower.post_layernorm",
                 "mm.out": "model.multi_modal_projector"},
        vision_layers={"v.blk": "model.vision_tower.encoder.layers"},
        inputs=_gemma3_inputs,
    ),
}


def register(hf_class: str, adapter: VisionAdapter) -> None:
    """Add an architecture's adapter (models whose adapters live in their own module)."""
    ADAPTERS[hf_class] = adapter


def adapter_for(model) -> VisionAdapter:
    from pollama.debug.reference import ReferenceError

    _import_adapters()
    name = type(model).__name__
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise ReferenceError(f"{name}: compare with an image knows {', '.join(sorted(ADAPTERS))}")
    return adapter


def _import_adapters() -> None:
    # The other architectures' adapters live in modules of their own, which register on import.
    from pollama.debug import vision_mistral3, vision_mllama, vision_qwen2vl  # noqa: F401


def _module(root, dotted: str):
    from pollama.debug.reference import ReferenceError

    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise ReferenceError(f"{type(root).__name__} has no module {dotted!r}")
    return module


def is_vision_language(model) -> bool:
    """Whether the reference is a vision-language model (compared through its adapter)."""
    _import_adapters()
    return type(model).__name__ in ADAPTERS


def vision_reference_tensors(model, tokens: Sequence[int], prepared=None) -> dict[str, np.ndarray]:
    """Run a transformers VLM on our token ids and our prepared image (None: a prompt without
    one); every tensor we record, by our name."""
    import torch

    adapter = adapter_for(model)
    rows = adapter.rows or batch_of_one
    found: dict[str, np.ndarray] = {}
    handles = []

    def keep(name: str):
        def hook(_module, _inputs, output):
            first = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
            found[name] = rows(name, first, model, prepared)
        return hook

    def keep_input(name: str):
        def hook(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            found[name] = batch_of_one(name, x, model, prepared)
        return hook

    layers = _module(model, adapter.text_layers)
    try:
        handles.append(layers[0].register_forward_pre_hook(keep_input("token_embd"), with_kwargs=True))
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(keep(f"blk.{i}.out")))
            for ours, part in (("attn_out", "self_attn"), ("ffn_out", "mlp")):
                if getattr(layer, part, None) is not None:
                    handles.append(getattr(layer, part).register_forward_hook(keep(f"blk.{i}.{ours}")))
        handles.append(_module(model, adapter.text_norm).register_forward_hook(keep("output_norm")))
        for prefix, path in adapter.vision_layers.items():
            for i, layer in enumerate(_module(model, path)):
                handles.append(layer.register_forward_hook(keep(f"{prefix}.{i}.out")))
        for name, path in adapter.modules.items():
            handles.append(_module(model, path).register_forward_hook(keep(name)))
        with torch.no_grad():
            out = model(**adapter.inputs(model, tokens, prepared))
    finally:
        for handle in handles:
            handle.remove()
    found["logits"] = out.logits[0].float().numpy().copy()
    return found
