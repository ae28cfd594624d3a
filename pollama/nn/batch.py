"""Batch: the tokens of one forward pass, each with its sequence and position; what a
model's forward takes, and what the KV caches plan each step's cells and mask from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pollama.ml.base import Context, Tensor


@dataclass
class Batch:
    """Tokens to run in one forward pass, each with its sequence and position."""

    tokens: np.ndarray  # int32 [t]
    positions: np.ndarray  # int32 [t]
    seq_ids: np.ndarray  # int32 [t]
    outputs: np.ndarray  # int32 indices into the batch whose logits are wanted
    # Images (see models/multimodal.py), all optional: rows replacing token embeddings
    # (embeds float32 [t, dim], keep float32 [t, 1]: 0 where a row replaces), M-RoPE
    # positions int32 [t, 3], the last position each token may see when that is past its
    # own (an image seen both ways), and the prompt items themselves.
    embeds: np.ndarray | None = None
    keep: np.ndarray | None = None
    rope_positions: np.ndarray | None = None
    visible_until: np.ndarray | None = None
    items: Sequence | None = None
    # Every row computed as a one-token step of its own would compute it (speculative
    # verification): one-row matmul kernels and attention row by row, so each row's logits
    # are bit for bit those of decoding its tokens one at a time. For batches of a few
    # single-token rows only: a prompt chunk computed this way would be slow.
    rows_apart: bool = False

    @classmethod
    def single(cls, tokens: Sequence[int], start: int, seq: int = 0, all_logits: bool = False) -> Batch:
        """Consecutive tokens of one sequence from position `start`; logits of the last (or all)."""
        t = len(tokens)
        outputs = np.arange(t, dtype=np.int32) if all_logits else np.array([t - 1], dtype=np.int32)
        return cls(
            np.asarray(tokens, dtype=np.int32),
            np.arange(start, start + t, dtype=np.int32),
            np.full(t, seq, dtype=np.int32),
            outputs,
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def arrays(self) -> dict[str, np.ndarray]:
        """The batch's data by input name (as bind() names it, and embed()/multi_positions())."""
        arrays = {"tokens": self.tokens, "positions": self.positions, "outputs": self.outputs}
        if self.rope_positions is not None:
            arrays["rope_positions"] = multi_positions_array(self.rope_positions)
        return arrays

    def embed(self, ctx: Context, x: Tensor) -> Tensor:
        """Token embeddings x [t, dim] with the batch's image rows put in their places."""
        if self.embeds is None:
            return x
        return x * ctx.input(self.keep, name="embeds.keep") + ctx.input(self.embeds, name="embeds")

    def multi_positions(self, ctx: Context) -> Tensor:
        """The batch's M-RoPE positions as the rope op takes them (int32 [4 * t])."""
        if self.rope_positions is None:
            raise ValueError("this batch has no M-RoPE positions (the engine makes them for models that ask)")
        return ctx.input(multi_positions_array(self.rope_positions), name="rope_positions")

    def shape_key(self) -> tuple:
        """What, beside sizes, decides the graph a model builds for this batch."""
        return (self.embeds is not None, self.rope_positions is not None, self.rows_apart)

    def sequence_runs(self) -> tuple[tuple[int, int], ...] | None:
        """(first row, rows) of each run of one sequence's tokens, or None if there is one run."""
        if len(self.seq_ids) == 0:
            return None
        starts = [0] + [i for i in range(1, len(self.seq_ids)) if self.seq_ids[i] != self.seq_ids[i - 1]]
        if len(starts) == 1:
            return None
        ends = starts[1:] + [len(self.seq_ids)]
        return tuple((a, b - a) for a, b in zip(starts, ends))

    def attention_groups(self) -> tuple[tuple[int, int], ...] | None:
        """(first row, rows) of the query rows attention computes together (see
        Context.attention): each sequence's run, or each row alone when rows_apart."""
        if self.rows_apart and len(self.tokens) > 1:
            return tuple((row, 1) for row in range(len(self.tokens)))
        return self.sequence_runs()

    def bind(self, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """The batch as named inputs of a context: (tokens, positions, outputs); M-RoPE
        positions come from multi_positions()."""
        return tuple(ctx.input(array, name=name) for name, array in self.arrays().items() if name != "rope_positions")


def multi_positions_array(rope_positions: np.ndarray) -> np.ndarray:
    """[t, 3] (t, h, w) positions as ggml's multi-section rope reads them: all t, all h, all
    w, then a fourth section (unused by these models) of zeros."""
    t = len(rope_positions)
    out = np.zeros(4 * t, dtype=np.int32)
    out[: 3 * t] = np.ascontiguousarray(rope_positions.T, dtype=np.int32).reshape(-1)
    return out
