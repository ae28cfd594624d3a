"""Gemma 3 (Gemma Team 2025): QK-norm, sandwich norms, GeGLU, 5 local : 1 global attention; with
a SigLIP image encoder (vision.py) when the file has one, its images seen both ways in the prompt."""

from __future__ import annotations

import math

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import LayerCaches
from pollama.ml.base import Backend, Context, RopeMode, Tensor
from pollama.models import imageproc
from pollama.models.base import Config, TextModel, positive, register
from pollama.models.gemma3.process_image import process_image
from pollama.models.gemma3.vision import VisionModel
from pollama.models.llama.model import read_rope_scaling
from pollama.models.multimodal import Image, ImageToken
from pollama.errors import ModelError
from pollama.nn import Batch, Linear, Module, RMSNorm, RopeScaling, Weights, attention, make_rope


class Block(Module):
    """One layer: norms before and after both attention and MLP (GGUF norm weights include Gemma's +1)."""

    attn_norm: RMSNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_q_norm: RMSNorm
    attn_k_norm: RMSNorm
    attn_output: Linear
    post_attention_norm: RMSNorm
    ffn_norm: RMSNorm
    ffn_gate: Linear
    ffn_up: Linear
    ffn_down: Linear
    post_ffw_norm: RMSNorm


@register("gemma3")
class Gemma3(TextModel):
    # The SigLIP position table is read by row; the projection is transposed in the graph.
    gathered = ("token_embd.weight", "v.position_embedding.weight", "mm.mm_input_projection.weight")

    # (and TextModel's token_embd and output)
    blk: list[Block]
    output_norm: RMSNorm

    def __init__(self, cfg: Config, w: Weights):
        self.read_dims(cfg, head_dim=256)
        self.n_ctx_train = cfg.int("context_length", 131072)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-6)
        self.window = positive(cfg.int("attention.sliding_window", 4096), "attention.sliding_window")
        self.final_softcap = cfg.float("final_logit_softcapping", 0.0)

        # Layers alternate five sliding-window ("local") to one global, unless the file lists them.
        pattern = cfg.list("attention.sliding_window_pattern", None)
        if pattern is not None and len(pattern) != self.n_layers:
            raise ModelError(f"sliding_window_pattern has {len(pattern)} entries for {self.n_layers} layers")
        self.is_local = [bool(pattern[i]) if pattern is not None else (i + 1) % 6 != 0 for i in range(self.n_layers)]

        scaling = read_rope_scaling(cfg)
        if self.window < self.n_ctx_train and f"{cfg.arch}.rope.scaling.factor" not in cfg.metadata:
            # Ollama's own files for Gemma 3 leave the scaling out, and its engine fills it in
            # by size, as the models' configs have it: the 4B, 12B and 27B (34, 48, 62 layers)
            # scale global RoPE linearly by 8; the 1B (26 layers) has no final soft-capping.
            if self.n_layers in (34, 48, 62):
                scaling = RopeScaling(kind="linear", factor=8.0)
            if self.n_layers == 26:
                self.final_softcap = 0.0
        self.local_rope = make_rope(self.head_dim, cfg.float("rope.local.freq_base", 10000.0), RopeMode.NEOX)
        self.global_rope = make_rope(self.head_dim, cfg.float("rope.freq_base", 1000000.0), RopeMode.NEOX, scaling)
        # Queries are scaled before attention, which then uses scale 1: by 1/sqrt(head_dim),
        # except Gemma 3 27B (62 layers), trained with 1/sqrt(dim / heads).
        self.query_scale = 1.0 / math.sqrt(self.dim // self.n_heads if self.n_layers == 62 else self.head_dim)

        self.blk = [Block.load(w, f"blk.{i}", eps=eps) for i in range(self.n_layers)]
        self.load_weights(w, eps=eps)

        if "v.patch_embedding.weight" in w:
            self.vision = True
            self.v = VisionModel(cfg, w, self.dim)
            self.image_markers(cfg)

    # -- images -----------------------------------------------------------------------------
    def image_markers(self, cfg: Config) -> None:
        """The tokens around an image's soft tokens, found by their text (Ollama's fixed ids otherwise)."""
        tokens = cfg.list("tokenizer.ggml.tokens", None) or []
        ids = {}
        for i, text in enumerate(tokens[: self.vocab_size]):
            ids.setdefault(text, i)

        def find(*texts: str, default: int) -> int:
            i = next((ids[t] for t in texts if t in ids), default)
            if not 0 <= i < self.vocab_size:
                raise ModelError(f"the vocabulary has no {texts[0]!r} token (needed around images)")
            return i

        self.start_of_image = find("<start_of_image>", default=255999)
        self.end_of_image = find("<end_of_image>", default=256000)
        # "\n\n" as SentencePiece ("\n\n", Gemma's 108) or byte-level BPE ("ĊĊ") spells it.
        self.newlines = [find("\n\n", "ĊĊ", default=108)]
        # The soft tokens' own id matters only for prompt-cache identity (their embedding is
        # replaced) but must index a row: HF's <image_soft_token>, else 0 (Ollama's placeholder).
        i = ids.get("<image_soft_token>", 0)
        self.image_token = i if i < self.vocab_size else 0

    def preprocess(self, data: bytes) -> np.ndarray:
        """The image as SigLIP takes it: [3, image_size, image_size] in [-1, 1]."""
        if not self.vision:
            return super().preprocess(data)
        return process_image(imageproc.decode_image(data), image_size=self.v.image_size)

    def encode_image(self, backend: Backend, data: bytes) -> Image:
        """The image's soft tokens: SigLIP on the resized image, pooled and projected to the text width."""
        if not self.vision:
            return super().encode_image(backend, data)
        pixels = self.preprocess(data)
        with backend.context() as ctx:
            (embeds,) = ctx.compute(self.v(ctx, pixels))
        return Image(digest=Image.digest_of(data), embeds=embeds, meta={"tokens": len(embeds)})

    def image_items(self, image: Image) -> list:
        """As HF's Gemma3Processor lays an image out: "\n\n<start_of_image>", the soft tokens (which
        see each other both ways), "<end_of_image>\n\n"."""
        if not self.vision:
            return super().image_items(image)
        n = len(image.embeds)
        soft = [ImageToken(token=self.image_token, image=image, row=i, block=(i, n)) for i in range(n)]
        return [*self.newlines, self.start_of_image, *soft, self.end_of_image, *self.newlines]

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        """Global layers keep every position; local layers only the window (plus one batch)."""
        return self.windowed_cache(backend, self.is_local, self.window, n_ctx, n_batch, n_seq, dtype)

    def shift_keys(self, ctx: Context, layer: int, keys: Tensor, offsets: Tensor) -> Tensor:
        rope = self.local_rope if self.is_local[layer] else self.global_rope
        return keys.rope(offsets, rope.for_shift())

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        t = len(batch)
        tokens, positions, outputs = batch.bind(ctx)
        x = self.token_embd(tokens).scale(math.sqrt(self.dim))  # [t, dim]
        x = batch.embed(ctx, x)  # image rows in place (not scaled: HF scales only token embeddings)
        ctx.record("token_embd", x)
        for i, layer in enumerate(self.blk):
            rope = self.local_rope if self.is_local[i] else self.global_rope
            h = layer.attn_norm(x)
            q = layer.attn_q_norm(layer.attn_q(h).reshape(t, self.n_heads, self.head_dim))
            k = layer.attn_k_norm(layer.attn_k(h).reshape(t, self.n_kv_heads, self.head_dim))
            v = layer.attn_v(h).reshape(t, self.n_kv_heads, self.v_head_dim)
            q = q.rope(positions, rope).scale(self.query_scale)
            k = k.rope(positions, rope)
            a = layer.attn_output(attention(ctx, q, k, v, cache, i, scale=1.0))
            if i == self.n_layers - 1:  # from here on only the rows whose logits are wanted
                a, x = a.rows(outputs), x.rows(outputs)
            ctx.record(f"blk.{i}.attn_out", a)
            x = x + layer.post_attention_norm(a)

            h = layer.ffn_norm(x)
            h = layer.ffn_down(layer.ffn_gate(h).geglu(layer.ffn_up(h)))
            ctx.record(f"blk.{i}.ffn_out", h)
            x = x + layer.post_ffw_norm(h)
            ctx.record(f"blk.{i}.out", x)
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)
        if self.final_softcap:
            logits = logits.softcap(self.final_softcap)
        ctx.record("logits", logits)
        return logits
