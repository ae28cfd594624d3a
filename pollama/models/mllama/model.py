"""Llama 3.2 Vision (Meta 2024): a Llama decoder with gated cross-attention layers that read an image.

The image never enters the token sequence: one `<|image|>` token marks where it is, and some
layers (`attention.cross_attention_layers`) attend from the text to the image's states instead
of to the text. Those layers' K/V are made once per image and kept in an encoder cache. Text
before the image gets nothing from them; a sequence without an image skips them.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import KVCache, pages_for
from pollama.kvcache.encoder import EncoderCache, WithEncoder
from pollama.ml.base import Backend, Context, RopeMode, Tensor
from pollama.models import imageproc
from pollama.models.base import Config, TextModel, register
from pollama.models.llama.model import Block, decoder_layer, read_rope_scaling
from pollama.models.mllama.process_image import process_image
from pollama.models.mllama.vision import VisionModel
from pollama.models.multimodal import Image, ImageToken
from pollama.errors import ModelError
from pollama.nn import Batch, Linear, Module, RMSNorm, Weights, make_rope

IMAGE_TOKEN = "<|image|>"
IMAGE_TOKEN_ID = 128256  # Llama 3.2 Vision's, when the vocabulary does not name it


class CrossBlock(Module):
    """A cross-attention layer: x + tanh(g_a) * xattn(norm(x), image), h + tanh(g_m) * mlp(norm(h))."""

    attn_norm: RMSNorm
    cross_attn_q_proj: Linear
    cross_attn_k_proj: Linear
    cross_attn_v_proj: Linear
    cross_attn_o_proj: Linear
    cross_attn_q_norm: RMSNorm
    cross_attn_k_norm: RMSNorm
    cross_attn_attn_gate: Tensor
    ffn_norm: RMSNorm
    ffn_gate: Linear
    ffn_up: Linear
    ffn_down: Linear
    cross_attn_mlp_gate: Tensor


@register("mllama")
class Mllama(TextModel):
    one_image = True
    gathered = ("token_embd.weight", *VisionModel.gathered)

    # (and TextModel's token_embd, vocab + 8 rows: <|image|> has one, and output)
    blk: list[Block | CrossBlock]
    output_norm: RMSNorm
    rope_freqs: Annotated[Optional[Tensor], "rope_freqs.weight"]

    def __init__(self, cfg: Config, w: Weights):
        self.read_dims(cfg)
        self.n_ctx_train = cfg.int("context_length", 131072)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-5)
        self.rope = make_rope(cfg.int("rope.dimension_count", self.head_dim), cfg.float("rope.freq_base", 500000.0),
                              RopeMode.NORMAL, read_rope_scaling(cfg))
        cross = [int(i) for i in cfg.list("attention.cross_attention_layers", [])]
        if any(not 0 <= i < self.n_layers for i in cross):
            raise ModelError(f"cross_attention_layers {cross} outside the {self.n_layers} layers")
        self.cross_layers = set(cross)

        self.blk = [(CrossBlock if i in self.cross_layers else Block).load(w, f"blk.{i}", eps=eps)
                    for i in range(self.n_layers)]
        self.load_weights(w, eps=eps)

        # A file may hold the text model alone (Ollama splits some): it then takes no images.
        self.vision_model = VisionModel(cfg, w) if "v.patch_embd.weight" in w else None
        self.vision = self.vision_model is not None
        tokens = cfg.metadata.get("tokenizer.ggml.tokens") or []
        self.image_token = tokens.index(IMAGE_TOKEN) if IMAGE_TOKEN in tokens else IMAGE_TOKEN_ID
        if self.vision_model is not None and self.vision_model.out_dim != self.dim:
            raise ModelError(f"mm.0 gives states of width {self.vision_model.out_dim} for a model of width {self.dim}")

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, data: bytes):
        """The image cut into tiles as the vision model takes them (a MllamaImage)."""
        if self.vision_model is None:
            raise ModelError("this mllama file has no vision model")
        vm = self.vision_model
        return process_image(imageproc.decode_image(data), tile_size=vm.image_size, max_num_tiles=vm.max_num_tiles)

    def encode_image(self, backend: Backend, data: bytes) -> Image:
        """Tile, encode and project an image: its cross-attention states."""
        tiles = self.preprocess(data)
        return self.encode_pixels(backend, tiles.pixel_values, tiles.aspect_ratio_id, tiles.num_tiles,
                                  Image.digest_of(data))

    def encode_pixels(self, backend: Backend, pixel_values: np.ndarray, aspect_ratio_id: int, num_tiles: int,
                      digest: str) -> Image:
        """The Image of preprocessed tiles [max_num_tiles, C, S, S] (zero tiles after the first num_tiles)."""
        vm = self.vision_model
        with backend.context() as ctx:
            (states,) = ctx.compute(vm(ctx, pixel_values, aspect_ratio_id, num_tiles))
        meta = {"num_tiles": num_tiles, "aspect_ratio_id": aspect_ratio_id, "rows_per_tile": vm.positions}
        return Image(digest=digest, embeds=states, meta=meta)

    def image_items(self, image: Image) -> list:
        """One `<|image|>` token: the image is read through cross-attention, not laid out in the prompt."""
        return [ImageToken(token=self.image_token, image=image, row=None)]

    def _image_of(self, item):
        # (digest, states, rows text may see) of a prompt item that is one of our images.
        if not isinstance(item, ImageToken) or item.token != self.image_token:
            return None
        image = item.image
        return image.digest, image.embeds, image.meta["num_tiles"] * image.meta["rows_per_tile"]

    def new_cache(self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16):
        """Causal K/V for the self-attention layers; the image's K/V for the cross layers."""
        own = [i for i in range(self.n_layers) if i not in self.cross_layers]
        caches = [KVCache(backend, own, pages_for(n_ctx) * n_seq, self.k_width, self.v_width, dtype=dtype)] if own else []
        rows = self.vision_model.max_num_tiles * self.vision_model.positions if self.vision_model else 1
        encoder = EncoderCache(backend, sorted(self.cross_layers), rows, self.k_width, self.v_width, dtype=dtype)
        return WithEncoder(caches, encoder, self._image_of)

    # -- text -----------------------------------------------------------------------------
    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        tokens, positions, outputs = batch.bind(ctx)
        x = self.token_embd(tokens)  # [t, dim]
        ctx.record("token_embd", x)
        encoder = cache.encoder
        # Cross layers run only for a batch whose sequence has an image (skipped, they are the identity).
        cross = encoder.active(ctx)
        scale = 1.0 / math.sqrt(self.head_dim)
        last = self.n_layers - 1
        for i, layer in enumerate(self.blk):
            if isinstance(layer, CrossBlock):
                if not cross:  # (recorded all the same: transformers skips the layer, ours is the identity)
                    if i == last:
                        x = x.rows(outputs)
                    ctx.record(f"blk.{i}.out", x)
                    continue
                x = self.cross_layer(ctx, layer, i, x, encoder, scale, outputs if i == last else None)
                ctx.record(f"blk.{i}.out", x)
            else:
                x = decoder_layer(ctx, self, layer, i, x, positions, cache, outputs)  # Llama's
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)
        ctx.record("logits", logits)
        return logits

    def cross_layer(self, ctx: Context, layer: CrossBlock, i: int, x: Tensor, encoder: EncoderCache, scale: float,
                    outputs: Tensor | None) -> Tensor:
        t = x.shape[0]
        mask, keep = encoder.row_inputs(ctx)
        h = layer.attn_norm(x)
        q = layer.cross_attn_q_norm(layer.cross_attn_q_proj(h).reshape(t, self.n_heads, self.head_dim))
        states = encoder.states(ctx)
        if states is not None:  # the step that reaches the image makes its K/V, once
            rows = states.shape[0]
            k = layer.cross_attn_k_norm(layer.cross_attn_k_proj(states).reshape(rows, self.n_kv_heads, self.head_dim))
            v = layer.cross_attn_v_proj(states).reshape(rows, self.n_kv_heads, self.head_dim)
            keys, values = encoder.update(ctx, i, self.n_kv_heads, k, v)
        else:
            keys, values = encoder.update(ctx, i, self.n_kv_heads)
        # No RoPE and no causality: text sees the whole image (its real tiles). Text before
        # the image gets nothing from the layer (Meta's full_text_row_masked_out_mask on
        # both outputs), so it is the same with or without an image, and a sequence without
        # one can skip the layer.
        a = layer.cross_attn_o_proj(ctx.attention(q, keys, values, mask, scale)) * keep
        if outputs is not None:
            a, x, keep = a.rows(outputs), x.rows(outputs), keep.rows(outputs)
        x = x + a * ctx.view(layer.cross_attn_attn_gate, 0, 1).tanh()
        h = layer.ffn_norm(x)
        m = layer.ffn_down(layer.ffn_gate(h).swiglu(layer.ffn_up(h)))
        ctx.record(f"blk.{i}.ffn_out", m)  # transformers' mlp output: before the mask and the gate
        m = m * keep
        return x + m * ctx.view(layer.cross_attn_mlp_gate, 0, 1).tanh()
