"""Gemma 4 (text): Gemma 3's sandwich-normed blocks and local/global attention, with

- global layers of their own shape: wider heads (key_length vs key_length_swa), their own K/V
  head count, keys doubling as values where the file has no attn_v (attention_k_eq_v), and
  "proportional" RoPE: only the first part of the frequencies rotate (rope_freqs holds 1 for
  those and 1e30, which stops rotation, for the rest);
- values RMS-normalized without a weight, queries unscaled (attention scale 1);
- per-layer embeddings (the E2B/E4B models): a second token table, mixed with a projection of
  the embedded input, feeds each layer a small gated residual of its own;
- KV sharing: the last `shared_kv_layers` layers compute no K/V and attend over those of the
  last earlier layer of their kind (sliding or global);
- a learned scalar on each layer's output.

Norm weights are used as stored (Gemma 4's RMSNorm has no +1, unlike Gemma 3's).
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

from pollama.errors import ModelError
from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import N_KV_PAD, KVCache, LayerCaches, pages_for
from pollama.ml.base import Backend, Context, RopeMode, Tensor
from pollama.models.base import Config, TextModel, positive, register
from pollama.models.gemma3.model import Block as Gemma3Block
from pollama.nn import Batch, Embedding, Linear, RMSNorm, Weights, attention, attention_shared, make_rope


class Block(Gemma3Block):
    """Gemma 3's layer; K/V weights absent in KV-sharing layers, V absent where keys are values."""

    attn_k: Optional[Linear]
    attn_v: Optional[Linear]
    attn_k_norm: Optional[RMSNorm]
    layer_output_scale: Annotated[Optional[Tensor], "layer_output_scale.weight"]  # [1]
    # per-layer embeddings
    inp_gate: Optional[Linear]
    proj: Optional[Linear]
    post_norm: Optional[RMSNorm]


def per_layer(cfg: Config, key: str, n_layers: int, default=None) -> list[int]:
    """A key that is one number for every layer or an array of one per layer."""
    value = cfg.metadata.get(f"{cfg.arch}.{key}", default)
    if value is None:
        raise ModelError(f"model file lacks the key '{cfg.arch}.{key}'")
    values = value if isinstance(value, list) else [value] * n_layers
    if len(values) != n_layers or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ModelError(f"key '{cfg.arch}.{key}' must be a positive integer or {n_layers} of them, got {value!r}")
    return values


@register("gemma4")
class Gemma4(TextModel):
    gathered = ("token_embd.weight", "per_layer_token_embd.weight")

    # (and TextModel's token_embd and output)
    blk: list[Block]
    output_norm: RMSNorm
    rope_freqs: Annotated[Optional[Tensor], "rope_freqs.weight"]  # global layers' proportional RoPE
    per_layer_token_embd: Optional[Embedding]
    per_layer_model_proj: Optional[Linear]
    per_layer_proj_norm: Optional[RMSNorm]

    def __init__(self, cfg: Config, w: Weights):
        n = self.n_layers = positive(cfg.int("block_count"), "block_count")
        self.dim = positive(cfg.int("embedding_length"), "embedding_length")
        self.n_heads = positive(cfg.int("attention.head_count"), "attention.head_count")
        self.n_ctx_train = cfg.int("context_length", 131072)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-6)
        self.eps = eps
        self.window = positive(cfg.int("attention.sliding_window"), "attention.sliding_window")
        self.final_softcap = cfg.float("final_logit_softcapping", 0.0)

        pattern = cfg.list("attention.sliding_window_pattern")
        if len(pattern) != n:
            raise ModelError(f"sliding_window_pattern has {len(pattern)} entries for {n} layers")
        self.is_local = [bool(p) for p in pattern]

        # Head sizes and K/V heads, global layers and local ("swa") ones apart.
        kv_heads = per_layer(cfg, "attention.head_count_kv", n, self.n_heads)
        global_dim = positive(cfg.int("attention.key_length"), "attention.key_length")
        local_dim = positive(cfg.int("attention.key_length_swa", global_dim), "attention.key_length_swa")
        if cfg.int("attention.value_length", global_dim) != global_dim or \
                cfg.int("attention.value_length_swa", local_dim) != local_dim:
            raise ModelError("Gemma 4 needs value_length == key_length (and the same for the _swa keys)")
        self.layer_kv_heads = kv_heads
        self.layer_head_dim = [local_dim if self.is_local[i] else global_dim for i in range(n)]
        for i in range(n):
            if self.n_heads % kv_heads[i]:
                raise ModelError(f"layer {i}: head_count {self.n_heads} is not a multiple of "
                                 f"head_count_kv {kv_heads[i]}")
        # The largest layer bounds what the generic memory checks assume for every layer.
        self.n_kv_heads = max(kv_heads)
        self.head_dim = self.v_head_dim = max(self.layer_head_dim)

        # KV sharing: from layer n - shared_kv_layers on, a layer reads the K/V of the last
        # earlier layer of its kind.
        shared = cfg.int("attention.shared_kv_layers", 0)
        first_shared = n - shared
        if not 0 <= shared < n:
            raise ModelError(f"shared_kv_layers {shared} must be below block_count {n}")
        self.kv_source = list(range(n))
        for i in range(first_shared, n):
            kind = [j for j in range(first_shared) if self.is_local[j] == self.is_local[i]]
            if not kind:
                kind_name = "local" if self.is_local[i] else "global"
                raise ModelError(f"layer {i} shares K/V, but no earlier layer is {kind_name}")
            self.kv_source[i] = kind[-1]

        self.local_rope = make_rope(cfg.int("rope.dimension_count_swa", local_dim),
                                    cfg.float("rope.freq_base_swa", 10000.0), RopeMode.NEOX)
        self.global_rope = make_rope(cfg.int("rope.dimension_count", global_dim),
                                     cfg.float("rope.freq_base", 1000000.0), RopeMode.NEOX)
        for rope, size, key in ((self.local_rope, local_dim, "rope.dimension_count_swa"),
                                (self.global_rope, global_dim, "rope.dimension_count")):
            if not 0 < rope.dims <= size or rope.dims % 2:
                raise ModelError(f"key '{cfg.arch}.{key}' is {rope.dims}: it must be even, positive and at most "
                                 f"the head size {size}")

        if "blk.0.ffn_gate_inp.weight" in w or "blk.0.attn_qkv.weight" in w:
            raise ModelError("Gemma 4 with mixture-of-experts layers (26B-A4B) or fused attn_qkv is not supported")
        self.blk = [Block.load(w, f"blk.{i}", eps=eps) for i in range(n)]
        self.load_weights(w, eps=eps)
        self.ple_dim = cfg.int("embedding_length_per_layer_input", 0)
        if self.ple_dim and self.per_layer_token_embd is None:
            raise ModelError("embedding_length_per_layer_input is set but per_layer_token_embd.weight is missing")
        for i, layer in enumerate(self.blk):
            if i < first_shared and layer.attn_k is None:
                raise ModelError(f"blk.{i}.attn_k.weight is missing (layer {i} computes its own K/V)")
            if self.ple_dim and None in (layer.inp_gate, layer.proj, layer.post_norm):
                raise ModelError(f"blk.{i}: per-layer embedding weights (inp_gate, proj, post_norm) are missing")

    def layer_attention_sizes(self, i: int) -> tuple[int, int, int, int]:
        """(heads, K/V heads, key size, value size) of layer i, for the load-time checks."""
        return self.n_heads, self.layer_kv_heads[i], self.layer_head_dim[i], self.layer_head_dim[i]

    def shift_keys(self, ctx: Context, layer: int, keys: Tensor, offsets: Tensor) -> Tensor:
        if self.is_local[layer]:
            return keys.rope(offsets, self.local_rope.for_shift())
        return keys.rope(offsets, self.global_rope.for_shift(), self.rope_freqs)

    @property
    def k_width(self) -> int:
        return max(self.layer_kv_heads[i] * self.layer_head_dim[i] for i in range(self.n_layers))

    v_width = k_width

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        """Layers that compute K/V get cells (local ones only the window, plus one batch); layers
        that share read them."""
        groups: dict[tuple[bool, int], list[int]] = {}
        for i in sorted(set(self.kv_source)):
            groups.setdefault((self.is_local[i], self.layer_kv_heads[i] * self.layer_head_dim[i]), []).append(i)
        caches = []
        for (local, width), layers in groups.items():
            if local:
                # The live positions (the window before a batch, and the batch) can straddle one
                # more page than they fill.
                cells = (pages_for(min(n_ctx, self.window + n_batch)) + N_KV_PAD) * n_seq
                caches.append(KVCache(backend, layers, cells, width, width, window=self.window, dtype=dtype))
            else:
                caches.append(KVCache(backend, layers, pages_for(n_ctx) * n_seq, width, width, dtype=dtype))
        return LayerCaches(caches)

    def per_layer_inputs(self, tokens: Tensor, x: Tensor) -> Tensor:
        """[t, n_layers * ple_dim]: each token's own per-layer embedding, mixed with a projection
        of its (scaled) input embedding x."""
        t, n, p = x.shape[0], self.n_layers, self.ple_dim
        own = self.per_layer_token_embd(tokens).scale(math.sqrt(p)).reshape(t, n, p)
        mixed = self.per_layer_model_proj(x).scale(1.0 / math.sqrt(self.dim)).reshape(t, n, p)
        mixed = self.per_layer_proj_norm(mixed)
        return (mixed + own).scale(1.0 / math.sqrt(2.0)).reshape(t, n * p)

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        t = len(batch)
        tokens, positions, outputs = batch.bind(ctx)
        x = self.token_embd(tokens).scale(math.sqrt(self.dim))  # [t, dim]
        ctx.record("token_embd", x)
        ple = self.per_layer_inputs(tokens, x) if self.ple_dim else None  # [t, n_layers * ple_dim]
        last = self.n_layers - 1
        for i, layer in enumerate(self.blk):
            local, d, kv_heads = self.is_local[i], self.layer_head_dim[i], self.layer_kv_heads[i]
            rope, factors = (self.local_rope, None) if local else (self.global_rope, self.rope_freqs)
            h = layer.attn_norm(x)
            q = layer.attn_q_norm(layer.attn_q(h).reshape(t, self.n_heads, d)).rope(positions, rope, factors)
            if self.kv_source[i] == i:
                k = layer.attn_k(h).reshape(t, kv_heads, d)
                v = layer.attn_v(h).reshape(t, kv_heads, d) if layer.attn_v is not None else k
                k = layer.attn_k_norm(k).rope(positions, rope, factors)
                v = v.rms_norm(self.eps)
                a = attention(ctx, q, k, v, cache, i, scale=1.0)
            else:
                a = attention_shared(ctx, q, cache, self.kv_source[i], kv_heads, scale=1.0)
            a = layer.attn_output(a)
            if i == last:  # from here on only the rows whose logits are wanted
                a, x = a.rows(outputs), x.rows(outputs)
            ctx.record(f"blk.{i}.attn_out", a)
            x = x + layer.post_attention_norm(a)

            h = layer.ffn_norm(x)
            h = layer.ffn_down(layer.ffn_gate(h).geglu(layer.ffn_up(h)))
            ctx.record(f"blk.{i}.ffn_out", h)
            x = x + layer.post_ffw_norm(h)

            if ple is not None:
                mine = ple.slice(1, i * self.ple_dim, (i + 1) * self.ple_dim)  # [t, ple_dim]
                if i == last:
                    mine = mine.rows(outputs)
                g = layer.inp_gate(x).gelu() * mine
                x = x + layer.post_norm(layer.proj(g))
            if layer.layer_output_scale is not None:
                x = x * layer.layer_output_scale
            ctx.record(f"blk.{i}.out", x)
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)
        if self.final_softcap:
            logits = logits.softcap(self.final_softcap)
        ctx.record("logits", logits)
        return logits
