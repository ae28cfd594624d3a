"""Gemma 3 for `pollama compare --image`: where transformers' Gemma3ForConditionalGeneration keeps
SigLIP's layers and the projector, and the inputs its forward needs (token_type_ids mark the image's
soft tokens, which see each other both ways)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollama.models.reference import VisionAdapter


def _gemma3_inputs(model, tokens: Sequence[int], pixels: np.ndarray | None) -> dict:
    import torch

    ids = torch.tensor([list(tokens)], dtype=torch.long)
    if pixels is None:
        return {"input_ids": ids}
    image_token = model.config.image_token_id
    return {"input_ids": ids, "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels))[None],
            "token_type_ids": (ids == image_token).long()}


ADAPTERS = {
    "Gemma3ForConditionalGeneration": VisionAdapter(
        modules={"v.embd": "model.vision_tower.embeddings", "v.post_layernorm": "model.vision_tower.post_layernorm",
                 "mm.out": "model.multi_modal_projector"},
        vision_layers={"v.blk": "model.vision_tower.encoder.layers"},
        inputs=_gemma3_inputs,
    ),
}
