"""MyModel (Author et al. 2025): one line on what the architecture is.

TEMPLATE: copy this folder to pollama/models/<name>/, rename MyModel, set ARCH to the GGUF
general.architecture, and change what your architecture changes. As it stands it is a plain
pre-norm decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) that keeps HF's weight
layout, which it runs with NeoX-style RoPE, so it computes Llama/Qwen2-style checkpoints
converted by the template's convert.py. Say in this docstring what differs from the paper.
"""

from __future__ import annotations

import math

from pollama.kvcache import Batch
from pollama.ml.base import Context, RopeMode, Tensor
from pollama.models.base import Config, TextModel, output_projection, register
from pollama.nn import Embedding, Linear, RMSNorm, Weights, attention, make_rope

ARCH = "mymodel"  # TEMPLATE: general.architecture; the GGUF keys are "<ARCH>.block_count", ...


class Block:
    """One decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, w: Weights, i: int, eps: float):
        # Attributes named as the GGUF tensors (blk.N.<name>.weight): Linear.load also takes
        # the .bias when the file has one.
        p = f"blk.{i}"
        self.attn_norm = RMSNorm.load(w, f"{p}.attn_norm", eps)
        self.attn_q = Linear.load(w, f"{p}.attn_q")
        self.attn_k = Linear.load(w, f"{p}.attn_k")
        self.attn_v = Linear.load(w, f"{p}.attn_v")
        self.attn_output = Linear.load(w, f"{p}.attn_output")
        self.ffn_norm = RMSNorm.load(w, f"{p}.ffn_norm", eps)
        self.ffn_gate = Linear.load(w, f"{p}.ffn_gate")
        self.ffn_up = Linear.load(w, f"{p}.ffn_up")
        self.ffn_down = Linear.load(w, f"{p}.ffn_down")


@register(ARCH)
class MyModel(TextModel):
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

        self.token_embd = Embedding(w["token_embd.weight"])
        self.blk = [Block(w, i, eps) for i in range(self.n_layers)]
        self.output_norm = RMSNorm.load(w, "output_norm", eps)
        self.output = output_projection(w)  # output.weight, or the embedding when tied
        self.vocab_size = self.output.out_features

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
