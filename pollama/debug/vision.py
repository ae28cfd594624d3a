"""The reference side for vision-language models: transformers' model on our prompt and our pixels.

Our preprocessing is proven bitwise equal to transformers' image processors
(tests/models/test_image_processing.py), so the reference is given the very image our model
prepared, and the prompt's token ids our model laid out. Each architecture's adapter (its
folder's reference.py: pollama/models/reference.py) knows where transformers keeps the layers,
which extra inputs its forward needs, and how its vision tensors line up with ours (rows in our
order, no batch dim):

    v.embd             the vision tower's input to its first layer (patches + positions)
    v.blk.N.out        vision layer N's output (v.global.blk.N.out: mllama's global layers)
    v.post_layernorm   the tower's final norm (Gemma 3's SigLIP)
    mm.out             the projector's output: the rows the text model reads
    token_embd         the text model's first layer's input, image rows in place
    blk.N.out, output_norm, logits   as for text models
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollama.models import discovery
from pollama.models.reference import VisionAdapter, batch_of_one


def adapters() -> dict[str, VisionAdapter]:
    """Every architecture folder's adapters (its reference.py's ADAPTERS), by transformers class."""
    found: dict[str, VisionAdapter] = {}
    for module in discovery.each("reference"):
        found.update(module.ADAPTERS)
    return found


def adapter_for(model) -> VisionAdapter:
    from pollama.debug.reference import ReferenceError

    known = adapters()
    name = type(model).__name__
    adapter = known.get(name)
    if adapter is None:
        raise ReferenceError(f"{name}: compare with an image knows {', '.join(sorted(known))}")
    return adapter


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
    return type(model).__name__ in adapters()


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
