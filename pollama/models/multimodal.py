"""Images in a prompt: what a vision model gives the engine, and what the engine gives back.

A prompt is a list of items, one per position: an int is a token; an `ImageToken` is a
position an image fills. A vision model (a TextModel with `vision = True`):

1. `encode_image(backend, data)` decodes and preprocesses the bytes, runs its vision tower
   and projector in a context of its own, and returns an `Image`: the rows the text model
   consumes (embeddings that replace token embeddings, or mllama's cross-attention states).
2. `image_items(image)` lays the image out as prompt items: the model's own marker tokens
   (ints) and one `ImageToken` per position the image fills.

The engine puts the items in batches like tokens and hands each batch's image data to the
model through `Batch.embeds` (rows to substitute), `Batch.rope_positions` (M-RoPE) and the
cache mask (`Batch.visible_until`: image tokens that see their whole image). Items compare
equal by content, so a chat's next turn with the same image reuses the cached positions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np


@dataclass(eq=False)
class Image:
    """One image as a vision model encoded it."""

    digest: str  # sha256 of the image bytes: what makes two prompt images the same
    embeds: np.ndarray  # float32 [rows, dim]: embeddings for ImageToken.row, or cross-attention states
    meta: dict = field(default_factory=dict)  # model-specific (grid size, tiles, aspect ratio id)

    @staticmethod
    def digest_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, eq=False)
class ImageToken:
    """A prompt position filled by an image.

    `token` is the id the position carries (the placeholder; its embedding is used when `row`
    is None). `row` picks the image's embedding row that replaces the token embedding here.
    `rope` is the (t, h, w) M-RoPE offset from the rope position where the image starts, and
    `advance` how far the rope position moves after this item (text moves 1). `block` is
    (this item's index in its run, the run's length) for items that attend to their whole
    run both ways (Gemma 3's image tokens); the run must be evaluated in one batch.
    """

    token: int
    image: Image
    row: int | None = None
    rope: tuple[int, int, int] | None = None
    advance: int = 1
    block: tuple[int, int] | None = None

    def key(self) -> tuple:
        return (self.token, self.image.digest, self.row, self.rope, self.advance, self.block)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageToken) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


Item = Union[int, ImageToken]


def token_ids(items: Sequence[Item]) -> list[int]:
    """The token id at each position (the placeholder for image positions)."""
    return [item.token if isinstance(item, ImageToken) else item for item in items]


def has_images(items: Sequence[Item]) -> bool:
    return any(isinstance(item, ImageToken) for item in items)


def rope_positions(items: Sequence[Item], start: int = 0) -> np.ndarray:
    """M-RoPE positions int32 [n, 3] (t, h, w) of every item, the first at rope position `start`.

    Text moves all three by one; an image's items sit at the image's start plus their
    offsets, and the rope position after the image is its start plus its largest extent (as
    Qwen2-VL's get_rope_index).
    """
    out = np.empty((len(items), 3), dtype=np.int32)
    p = start
    for i, item in enumerate(items):
        if isinstance(item, ImageToken) and item.rope is not None:
            out[i] = (p + item.rope[0], p + item.rope[1], p + item.rope[2])
            p += item.advance
        else:
            out[i] = p
            p += item.advance if isinstance(item, ImageToken) else 1
    return out


def block_spans(items: Sequence[Item], start: int) -> np.ndarray | None:
    """For each item at position start+i, the last position it may see (its own position for
    causal items, the end of its run for items with a `block`); None when no item has one."""
    if not any(isinstance(item, ImageToken) and item.block is not None for item in items):
        return None
    last = np.arange(start, start + len(items), dtype=np.int32)
    for i, item in enumerate(items):
        if isinstance(item, ImageToken) and item.block is not None:
            index, length = item.block
            last[i] = start + i - index + length - 1
    return last


def block_bounds(items: Sequence[Item], i: int) -> tuple[int, int] | None:
    """(first, end) indices of the block item i belongs to, or None if it is in none."""
    item = items[i]
    if not isinstance(item, ImageToken) or item.block is None:
        return None
    index, length = item.block
    return i - index, i - index + length


def split_points(items: Sequence[Item], start: int, limit: int, image_starts_batch: bool = False) -> int:
    """Where a batch beginning at `start` of at most `limit` items may end without cutting a
    block in two: start + limit, or earlier at the start of a block that would not fit.
    A block longer than `limit` is an error (it could never be evaluated). With
    `image_starts_batch` (a model whose cache holds one image at a time), a batch also ends
    before any image but the sequence's first, so the text of every batch reads one image."""
    end = min(len(items), start + limit)
    if image_starts_batch:
        images = [i for i in range(end) if isinstance(items[i], ImageToken)]
        end = next((i for i in images[1:] if i > start), end)
    if end == len(items):
        bounds = None
    else:
        bounds = block_bounds(items, end)
    if bounds is None or bounds[0] == end:
        return end
    first, last = bounds
    if last - first > limit:
        raise ValueError(f"an image needs {last - first} positions in one batch; num_batch is {limit}")
    if first <= start:
        raise ValueError(f"an image needs {last - first} positions in one batch; num_batch is {limit}")
    return first


def embeds_for(items: Sequence[Item], dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(embeddings [n, dim], keep [n, 1]) for a batch's items, or None if none has a row.

    Rows of image positions carry the image's embedding and keep 0; the others carry zeros
    and keep 1, so `token_embeddings * keep + embeddings` places the images exactly.
    """
    if not any(isinstance(item, ImageToken) and item.row is not None for item in items):
        return None
    embeds = np.zeros((len(items), dim), dtype=np.float32)
    keep = np.ones((len(items), 1), dtype=np.float32)
    for i, item in enumerate(items):
        if isinstance(item, ImageToken) and item.row is not None:
            row = item.image.embeds[item.row]
            if row.shape != (dim,):
                raise ValueError(f"image embedding of width {row.shape[-1]} for a model of width {dim}")
            embeds[i] = row
            keep[i] = 0.0
    return embeds, keep


def rope_end(items: Sequence[Item], start: int = 0) -> int:
    """The rope position after the items (where the next text token goes)."""
    return start + sum(item.advance if isinstance(item, ImageToken) else 1 for item in items)


def keep_whole_blocks(items: Sequence[Item], keep: int) -> int:
    """A cached prefix length that does not end inside a block (a block is evaluated whole)."""
    if 0 < keep < len(items):
        bounds = block_bounds(items, keep)
        if bounds is not None and bounds[0] < keep:
            return bounds[0]
    return keep
