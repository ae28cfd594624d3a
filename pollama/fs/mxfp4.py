"""MXFP4 (OCP microscaling FP4) as OpenAI's gpt-oss checkpoints order it, and as GGML orders it.

Both hold blocks of 32 values: one e8m0 scale byte and 32 e2m1 codes (sign, 2 exponent bits,
1 mantissa bit) in 16 bytes, the same numbers. Only the order of the codes in those 16 bytes
differs: OpenAI's checkpoints pack values 2j and 2j+1 in byte j (low nibble first); GGML packs
values j and j+16 (as Q4_0 does). Ollama's own gpt-oss files keep OpenAI's order, as tensor type
4 (a retired ggml slot), with the scale byte first as GGML has it.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32  # values per block
BLOCK_BYTES = 17  # the scale byte, then 16 bytes of codes
OLLAMA_MXFP4 = 4  # the tensor type Ollama's gpt-oss files give their MXFP4 tensors


def ggml_codes(paired: np.ndarray) -> np.ndarray:
    """Code bytes [..., 16] in OpenAI's order (values 2j, 2j+1 in byte j) -> GGML's (j, j+16)."""
    codes = np.empty((*paired.shape[:-1], BLOCK), dtype=np.uint8)
    codes[..., 0::2] = paired & 0x0F
    codes[..., 1::2] = paired >> 4
    return codes[..., :16] | (codes[..., 16:] << 4)


def from_checkpoint(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI's `*_blocks` uint8 [..., n_blocks, 16] and `*_scales` uint8 [..., n_blocks] ->
    GGML's block_mxfp4 bytes uint8 [..., n_blocks * 17], values unchanged."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    scales = np.asarray(scales, dtype=np.uint8)
    if blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} do not match scales {list(scales.shape)}")
    out = np.concatenate([scales[..., None], ggml_codes(blocks)], axis=-1)  # [..., n_blocks, 17]
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK_BYTES)


def from_ollama(raw: np.ndarray) -> np.ndarray:
    """An Ollama gpt-oss tensor's bytes (blocks of the scale, then 16 bytes in OpenAI's order) ->
    GGML's MXFP4 bytes (a copy)."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % BLOCK_BYTES:
        raise ValueError(f"{raw.size} bytes are not whole MXFP4 blocks of {BLOCK_BYTES}")
    blocks = raw.reshape(-1, BLOCK_BYTES)
    return np.concatenate([blocks[:, :1], ggml_codes(blocks[:, 1:])], axis=1).reshape(-1)
