"""MyModel (Author et al. 2025): one line on what the architecture is.

TEMPLATE: copy this folder to pollama/models/<name>/, rename MyModel, set ARCH to the GGUF
general.architecture (the folder's name: that is how a file finds its model, with no registry
to edit), and change what your architecture changes. As it stands it is a plain
pre-norm decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) that keeps HF's weight
layout, which it runs with NeoX-style RoPE, so it computes Llama/Qwen2-style checkpoints
converted by the template's convert.py. Say in this docstring what differs from the paper.
"""

from __future__ import annotations

import math

from pollama.ml.base import Context, RopeMode, Tensor
from pollama.models.base import Config, TextModel, register
from pollama.nn import Batch, Linear, Module, RMSNorm, Weights, attention, make_rope

ARCH = "mymodel"  # TEMPLATE: general.architecture = the folder's name; GGUF keys are "<ARCH>.block_count", ...


class Block(Module):
    """One decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    # blk.N.<name>.weight (and .bias if any); Optional[...] if a file may lack it (nn/loader.py)
    attn_norm: RMSNorm
    attn_q: Linear
    attn_k: Linear
    attn_v: Linear
    attn_output: Linear
    ffn_norm: RMSNorm
    ffn_gate: Linear
    ffn_up: Linear
    ffn_down: Linear


@register(ARCH)
class MyModel(TextModel):
    blk: list[Block]  # (token_embd and output, tied when absent: TextModel's)
    output_norm: RMSNorm

    def __init__(self, cfg: Config, w: Weights):
        # Hyper-parameters come from GGUF keys, with the defaults the reference uses; read_dims
        # reads and checks the sizes every decoder has.
        self.read_dims(cfg)
        self.n_ctx_train = cfg.int("context_length", 4096)
        eps = cfg.float("attention.layer_norm_rms_epsilon", 1e-6)
        # NEOX rotates the two halves of each head, as HF's rotate_half; a converter that keeps
        # HF's q/k rows needs nothing more (Llama's converter permutes them for NORMAL instead).
        self.rope = make_rope(cfg.int("rope.dimension_count", self.head_dim), cfg.float("rope.freq_base", 10000.0),
                              RopeMode.NEOX)

        # A list's length is a hyper-parameter: build it; load_weights reads the rest (eps: the norms').
        self.blk = [Block.load(w, f"blk.{i}", eps=eps) for i in range(self.n_layers)]
        self.load_weights(w, eps=eps)

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        t = len(batch)
        tokens, positions, outputs = batch.bind(ctx)
        x = self.token_embd(tokens)  # [t, dim]
        # ctx.record names a tensor for `pollama compare` and OLLAMA_DEBUG (free when off).
        # The names are the ones pollama/debug/reference.py finds in the HF model.
        ctx.record("token_embd", x)
        for i, layer in enumerate(self.blk):
            h = layer.attn_norm(x)
            q = layer.attn_q(h).reshape(t, self.n_heads, self.head_dim)  # [t, heads, head_dim]
            k = layer.attn_k(h).reshape(t, self.n_kv_heads, self.head_dim)
            v = layer.attn_v(h).reshape(t, self.n_kv_heads, self.v_head_dim)
            q = q.rope(positions, self.rope)
            k = k.rope(positions, self.rope)
            a = layer.attn_output(attention(ctx, q, k, v, cache, i, 1.0 / math.sqrt(self.head_dim)))  # [t, dim]
            if i == self.n_layers - 1:  # from here on only the rows whose logits are wanted
                a, x = a.rows(outputs), x.rows(outputs)
            ctx.record(f"blk.{i}.attn_out", a)
            x = x + a

            h = layer.ffn_norm(x)
            m = layer.ffn_down(layer.ffn_gate(h).swiglu(layer.ffn_up(h)))
            ctx.record(f"blk.{i}.ffn_out", m)
            x = x + m
            ctx.record(f"blk.{i}.out", x)
        x = self.output_norm(x)
        ctx.record("output_norm", x)
        logits = self.output(x)  # [outputs, vocab]
        ctx.record("logits", logits)
        return logits
