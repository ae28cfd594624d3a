"""Mistral 3 (Pixtral tower, 2x2 patch merger, Mistral text model) for `pollama compare --image`.

transformers' Pixtral flattens its patches row by row, as ours does, and its patch merger
unfolds the grid into merged tokens row by row, as ours gathers them: every tensor lines up
as it comes ([1, patches, dim] for the tower, [tokens, text dim] for the projector).

    v.embd        model.vision_tower.ln_pre (the patch embeddings after the norm: layer 0's input)
    v.blk.N.out   model.vision_tower.transformer.layers.N
    mm.out        model.multi_modal_projector (norm, merger, linear, GELU, linear)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollama.models.reference import VisionAdapter


def _inputs(model, tokens: Sequence[int], prepared) -> dict:
    """input_ids, and with an image our pixels [1, 3, H, W] and their size (HF crops the patch
    grid to image_sizes; ours are exactly that size)."""
    import torch

    ids = torch.tensor([list(tokens)], dtype=torch.long)
    if prepared is None:
        return {"input_ids": ids}
    pixels = np.ascontiguousarray(prepared.pixel_values, dtype=np.float32)
    return {"input_ids": ids, "pixel_values": torch.from_numpy(pixels)[None],
            "image_sizes": torch.tensor([list(prepared.image_size)], dtype=torch.long)}


ADAPTERS = {"Mistral3ForConditionalGeneration": VisionAdapter(
    modules={"v.embd": "model.vision_tower.ln_pre", "mm.out": "model.multi_modal_projector"},
    vision_layers={"v.blk": "model.vision_tower.transformer.layers"},
    inputs=_inputs,
)}
