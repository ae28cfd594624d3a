"""Tiny random llama GGUF files with a byte-level vocabulary, for tests that need several
models sharing one tokenizer (speculative decoding with a draft model) or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.fs.writer import write_gguf
from pollama.tokenizer.pretokenize import BYTE_TO_UNICODE

SPECIALS = ["<unk>", "<s>", "</s>"]
# Every byte is a token (GPT-2's printable stand-ins), so any text tokenizes.
VOCAB = SPECIALS + [BYTE_TO_UNICODE[b] for b in range(256)]
DIM, FFN, HEADS, KV_HEADS, CONTEXT = 64, 128, 4, 2, 512


def tiny_llama(path: Path, seed: int = 0, n_layers: int = 2, noise: float = 0.0, noise_seed: int = 1,
               vocab: list[str] | None = None, eos: int = 2) -> Path:
    """A random llama (weights from `seed`), plus Gaussian `noise` of that scale on every
    weight matrix (from `noise_seed`): a small noise makes a model that mostly agrees with the
    noiseless one. Its output row for the special tokens is zero, so a random generation
    rarely ends early."""
    vocab = VOCAB if vocab is None else vocab
    meta = {
        "general.architecture": "llama", "general.name": f"tiny-{seed}",
        "llama.block_count": n_layers, "llama.embedding_length": DIM, "llama.attention.head_count": HEADS,
        "llama.attention.head_count_kv": KV_HEADS, "llama.feed_forward_length": FFN, "llama.context_length": CONTEXT,
        "llama.rope.dimension_count": DIM // HEADS, "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": vocab,
        "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)),
        "tokenizer.ggml.merges": [], "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": eos,
    }
    rng, jitter = np.random.default_rng(seed), np.random.default_rng(noise_seed)
    shapes = {"token_embd.weight": (len(vocab), DIM), "output_norm.weight": (DIM,), "output.weight": (len(vocab), DIM)}
    for i in range(n_layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (DIM,), f"blk.{i}.ffn_norm.weight": (DIM,),
            f"blk.{i}.attn_q.weight": (DIM, DIM), f"blk.{i}.attn_k.weight": (DIM * KV_HEADS // HEADS, DIM),
            f"blk.{i}.attn_v.weight": (DIM * KV_HEADS // HEADS, DIM), f"blk.{i}.attn_output.weight": (DIM, DIM),
            f"blk.{i}.ffn_gate.weight": (FFN, DIM), f"blk.{i}.ffn_up.weight": (FFN, DIM),
            f"blk.{i}.ffn_down.weight": (DIM, FFN),
        })
    tensors = []
    for name, shape in shapes.items():
        if len(shape) == 1:
            weight = np.ones(shape, dtype=np.float32)
        else:
            weight = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[1])
            weight += noise * jitter.standard_normal(shape).astype(np.float32) / np.sqrt(shape[1])
        if name == "output.weight":
            weight = weight * 4  # sharper choices: greedy text that does not dither between near ties
            weight[:len(SPECIALS)] = 0
        tensors.append((name, np.ascontiguousarray(weight, dtype=np.float32).view(np.uint8).ravel(), GGMLType.F32, shape))
    write_gguf(path, meta, tensors)
    return path
