"""Llama 3.2 Vision (mllama) for `pollama compare --image`: transformers' model as Meta's.

The reference is transformers' MllamaForConditionalGeneration put back to Meta's model
(llama-models' multimodal/model.py, which the released weights were trained with, and which
Ollama and we compute) in the two places where transformers 5.24 departs from it:
- its MllamaVisionEncoder returns each layer's *output* as hidden_states[i], so
  `intermediate_layers_indices` pick states one layer later than Meta's `return_intermediate`
  (each listed layer's input; also transformers 4.x and Ollama);
- its cross-attention layers zero only the MLP output of text before the image, where Meta's
  also multiplies the attention output by `full_text_row_masked_out_mask`.
Unpatched, transformers' logits differ from Meta's by 1 to 2 on the tiny model of
tests/models/mllama: every comparison would diverge at mm.out. `as_meta()` patches the classes
(for a block of code, as tests/models/mllama uses it); the compare reference patches the one
model instance it loaded (`meta_model`), so nothing else sees the change.

Our recorded layout is transformers': the vision layers run on [tiles * padded positions, dim]
(each tile's class token and patches padded to a multiple of 8, every tile of the canvas,
masked ones too), which is HF's [1, tiles * padded, dim]; `mm.out` is [tiles * positions,
text width] (padding dropped). The text model's cross-attention layers have `cross_attn`, not
`self_attn`: only their `mlp` output (before the mask and the gate) is compared, as ffn_out.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Sequence

import numpy as np

from pollama.models.reference import VisionAdapter, batch_of_one


def _encoder_forward_as_meta(self, hidden_states, attention_mask=None):
    # hidden_states[i] is layer i's input, as in Meta's model and transformers 4.x.
    from transformers.modeling_outputs import BaseModelOutput

    states = ()
    for layer in self.layers:
        states += (hidden_states,)
        hidden_states = layer(hidden_states=hidden_states, attention_mask=attention_mask)
    return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=states + (hidden_states,))


def _cross_layer_forward_as_meta(self, hidden_states, cross_attention_states=None, cross_attention_mask=None,
                                 attention_mask=None, full_text_row_masked_out_mask=None, cache=None, **kwargs):
    # transformers' layer, with Meta's mask on the attention output as well as on the MLP's.
    for unused in ("position_ids", "use_cache", "position_embeddings"):
        kwargs.pop(unused, None)
    residual = hidden_states
    h, _ = self.cross_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=cross_attention_mask,
                           cross_attention_states=cross_attention_states, cache=cache, **kwargs)
    if full_text_row_masked_out_mask is not None:
        h = full_text_row_masked_out_mask[:, 0] * h
    h = residual + self.cross_attn_attn_gate.tanh() * h
    residual = h
    h = self.mlp(self.post_attention_layernorm(h))
    if full_text_row_masked_out_mask is not None:
        h = full_text_row_masked_out_mask[:, 0] * h
    return residual + self.cross_attn_mlp_gate.tanh() * h


def _patches():
    from transformers.models.mllama import modeling_mllama

    return [(modeling_mllama.MllamaVisionEncoder, _encoder_forward_as_meta),
            (modeling_mllama.MllamaCrossAttentionDecoderLayer, _cross_layer_forward_as_meta)]


@contextlib.contextmanager
def as_meta():
    """transformers' Mllama classes computing Meta's model, for the block (see the module's docstring)."""
    patches = _patches()
    originals = [(cls, cls.forward) for cls, _ in patches]
    try:
        for cls, forward in patches:
            cls.forward = forward
        yield
    finally:
        for cls, forward in originals:
            cls.forward = forward


def meta_model(model):
    """Patch one loaded transformers Mllama model (its modules' forwards) to compute Meta's model."""
    for cls, forward in _patches():
        for module in model.modules():
            if type(module) is cls and module.forward.__func__ is not forward:
                module.forward = types.MethodType(forward, module)
    return model


def _inputs(model, tokens: Sequence[int], prepared) -> dict:
    import torch

    meta_model(model)  # the reference is Meta's model (idempotent)
    ids = torch.tensor([list(tokens)], dtype=torch.long)
    if prepared is None:
        return {"input_ids": ids}
    image_token = model.config.image_token_id
    at = [i for i, t in enumerate(tokens) if t == image_token]
    if len(at) != 1:
        raise ValueError(f"the prompt has {len(at)} {image_token} (image) tokens: mllama takes one image")
    tiles = prepared.pixel_values.shape[0]
    # As the processor makes it: from the image token to the end, text sees the image's real tiles.
    cross = torch.zeros((1, len(tokens), 1, tiles), dtype=torch.long)
    cross[0, at[0]:, 0, : prepared.num_tiles] = 1
    return {
        "input_ids": ids,
        "pixel_values": torch.from_numpy(np.ascontiguousarray(prepared.pixel_values, dtype=np.float32))[None, None],
        "aspect_ratio_ids": torch.tensor([[prepared.aspect_ratio_id]], dtype=torch.long),
        "aspect_ratio_mask": torch.from_numpy(np.asarray(prepared.aspect_ratio_mask, dtype=np.int64))[None, None],
        "cross_attention_mask": cross,
    }


def _rows(name: str, output, model, prepared) -> np.ndarray:
    array = output.detach().float().numpy()
    if name == "v.embd":
        # layernorm_pre's [1, tiles, positions, dim], padded (with zeros) as the layers take it.
        _, tiles, n, dim = array.shape
        padded = -(-n // 8) * 8
        out = np.zeros((tiles, padded, dim), dtype=np.float32)
        out[:, :n] = array[0]
        return out.reshape(tiles * padded, dim)
    if name == "mm.out":
        # [1, 1, tiles, positions, text width] -> the cross-attention states' rows
        return array.reshape(-1, array.shape[-1])
    return batch_of_one(name, output, model, prepared)


ADAPTERS = {"MllamaForConditionalGeneration": VisionAdapter(
    modules={"v.embd": "model.vision_model.layernorm_pre", "mm.out": "model.multi_modal_projector"},
    vision_layers={"v.blk": "model.vision_model.transformer.layers",
                   "v.global.blk": "model.vision_model.global_transformer.layers"},
    inputs=_inputs,
    rows=_rows,
)}
