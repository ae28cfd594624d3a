"""Qwen2-VL and Qwen2.5-VL against transformers: where their layers are, how to call them, and
how their vision rows line up with ours.

transformers' vision tower works on [patches, dim] (no batch dim), the patches in the
processor's merge-group order, which is ours (pollama/models/qwen2vl/vision.py). Qwen2.5-VL's
tower reorders the merge groups window by window after the patch embedding
(get_vision_window_index) and keeps that order through its blocks, the merger's norm and the
merger, restoring it only on the merger's output outside the module. Its rows are put back in
our order here; v.embd (the patch embedding's output) is taken before the reordering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pollama.models.reference import VisionAdapter

# Our names of the vision tensors whose HF rows are in window order (Qwen2.5-VL).
_WINDOWED = ("v.blk.", "v.merger.ln_q", "mm.out")


def _grid(prepared) -> list[list[int]]:
    return [[int(n) for n in prepared.grid_thw]]


def _inputs(model, tokens: Sequence[int], prepared: Any) -> dict:
    """input_ids, and with an image its pixels, its grid and which tokens are its rows."""
    import torch

    ids = torch.tensor([list(tokens)], dtype=torch.long)
    if prepared is None:
        return {"input_ids": ids}
    return {"input_ids": ids,
            "pixel_values": torch.from_numpy(np.ascontiguousarray(prepared.pixel_values, dtype=np.float32)),
            "image_grid_thw": torch.tensor(_grid(prepared), dtype=torch.long),
            "mm_token_type_ids": (ids == model.config.image_token_id).long()}


def _qwen2vl_rows(name: str, output, model, prepared) -> np.ndarray:
    """Qwen2-VL: the tower's rows are already ours ([patches, dim], [groups, dim] after the merger)."""
    array = output.detach().float().numpy()
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _qwen25vl_rows(name: str, output, model, prepared) -> np.ndarray:
    """Qwen2.5-VL: the windowed tensors' merge groups put back in our order."""
    array = _qwen2vl_rows(name, output, model, prepared)
    if prepared is None or not name.startswith(_WINDOWED):
        return array
    import torch
    from transformers.vision_utils import get_vision_window_index

    visual = model.model.visual
    window_index, _ = get_vision_window_index(torch.tensor(_grid(prepared)),
                                              spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    order = np.argsort(window_index.numpy(), kind="stable")  # HF's position of each of our merge groups
    groups = len(order)
    if array.shape[0] == groups:  # the merger's output: one row per group
        return array[order]
    # Patches: [groups * unit, dim], the unit patches of a group consecutive in either order.
    return array.reshape(groups, array.shape[0] // groups, -1)[order].reshape(array.shape)


def _adapter(rows) -> VisionAdapter:
    return VisionAdapter(
        modules={"v.embd": "model.visual.patch_embed", "v.merger.ln_q": "model.visual.merger.ln_q",
                 "mm.out": "model.visual.merger"},
        vision_layers={"v.blk": "model.visual.blocks"},
        inputs=_inputs,
        rows=rows,
    )


ADAPTERS = {
    "Qwen2VLForConditionalGeneration": _adapter(_qwen2vl_rows),
    "Qwen2_5_VLForConditionalGeneration": _adapter(_qwen25vl_rows),
}
