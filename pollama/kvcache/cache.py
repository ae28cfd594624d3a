"""KV caches: preallocated cells shared by a set of layers, causal or sliding-window.

Cells are bookkept in numpy on the Python side (which sequence and position each holds);
the K and V rows live in backend tensors [cells, kv_heads * head_dim], one pair per layer.
Every step allocates cells for its tokens, writes each layer's new K/V there, and attends
over cells [0, n_kv) with a mask built from the bookkeeping — so several sequences can share
one cache and one batch, and any range of positions can be removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pollama.errors import CacheFullError
from pollama.fs.ggml_types import GGMLType
from pollama.ml.base import Backend, Context, Tensor
from pollama.nn.batch import Batch


N_KV_PAD = 32
# Attention reads cells [0, n_kv) with n_kv a multiple of this: a multiple of ggml's F16
# dot-product step on every x86 build (32 with AVX2, 64 with AVX-512). The product of the
# softmax and V sums each query's row over n_kv cells in SIMD blocks of that step, and the
# cells past the last whole block in a scalar loop; with n_kv a whole number of blocks, the
# masked cells past a sequence's end add exact zeros, so how many there are (the cache's
# other sequences, the rest of a speculative batch) never changes a logit. Pages of 32 on
# AVX-512 left a scalar tail on every other page: logits moved by ~0.5 with n_kv.
KV_READ_PAD = 64
# With flash attention, which skips masked cells, cells are read in blocks of this many (as
# llama.cpp pads its cache for it): a decode step's graph then stays the same, and is reused,
# for 256 cells of growth, where 8 sequences decoding together would otherwise need a new
# graph (milliseconds of Python) every few steps.
KV_READ_PAD_FLASH = 256


# (ctx, layer, keys float32 [n, k_width], offsets int32 [n]) -> the keys turned by RoPE as
# if their positions had moved by the offsets: the model's rotation (TextModel.shift_keys).
TurnKeys = Callable[[Context, int, Tensor, Tensor], Tensor]


def pages_for(n_tokens: int) -> int:
    """Cells that hold n_tokens of one sequence: whole pages of N_KV_PAD."""
    return -(-n_tokens // N_KV_PAD) * N_KV_PAD


@dataclass
class StepPlan:
    """One cache's part of a step, decided before any graph exists: cells, mask, n_kv."""

    cells: np.ndarray  # int32 [t]: the cell each token's K/V goes to
    mask: np.ndarray  # float32 [t, n_kv]
    n_kv: int  # how many cells attention reads
    groups: tuple[tuple[int, int], ...] | None = None  # rows attention computes together (Batch.attention_groups)


@dataclass
class _Step:
    """The step's inputs inside its context, for update()."""

    ctx: Context
    cells: Tensor
    mask: Tensor
    n_kv: int
    groups: tuple[tuple[int, int], ...] | None
    written: set = field(default_factory=set)


class KVCache:
    """K/V cells for a set of layers; with `window`, attention sees only the last `window` positions."""

    def __init__(
        self,
        backend: Backend,
        layers: Sequence[int],
        n_cells: int,
        k_width: int,
        v_width: int,
        window: int | None = None,
        dtype: GGMLType = GGMLType.F16,
        page_size: int = N_KV_PAD,
        read_pad: int | None = None,
    ):
        self.backend = backend
        self.layers = list(layers)
        self.page_size = page_size
        # The cache's whole size, the largest n_kv, reads whole blocks too (of KV_READ_PAD
        # unless told: flash attention's coarser steps only keep graphs for longer).
        block = KV_READ_PAD if read_pad is None else read_pad
        if read_pad is None:
            read_pad = KV_READ_PAD_FLASH if backend.flash_attention else KV_READ_PAD
        self.read_pad = read_pad
        whole = math.lcm(page_size, block)
        self.n_cells = n_cells = -(-n_cells // whole) * whole
        self.window = window
        # As llama.cpp keeps them: K as rows [cells, width]; V transposed [width, cells] so
        # that attention multiplies by it without a copy, or as rows for flash attention.
        self.v_rows = backend.flash_attention
        self.k = {i: backend.zeros((n_cells, k_width), dtype) for i in self.layers}
        v_shape = (n_cells, v_width) if self.v_rows else (v_width, n_cells)
        self.v = {i: backend.zeros(v_shape, dtype) for i in self.layers}
        self.cell_pos = np.full(n_cells, -1, dtype=np.int32)  # -1: empty
        self.cell_seq = np.full(n_cells, -1, dtype=np.int32)
        # Cells are handed out in pages: position p of a sequence lives at offset
        # p % page_size of the page holding that sequence's (p // page_size)-th stretch.
        n_pages = n_cells // page_size
        self.page_seq = np.full(n_pages, -1, dtype=np.int32)  # -1: free
        self.page_index = np.full(n_pages, -1, dtype=np.int32)  # which stretch of the sequence
        self.step: _Step | None = None

    # -- bookkeeping ----------------------------------------------------------------------
    def _free_out_of_window(self, batch: Batch) -> None:
        """Sliding window: free cells no future token of their sequence can see."""
        if self.window is None:
            return
        for seq in np.unique(batch.seq_ids):
            first = batch.positions[batch.seq_ids == seq].min()
            dead = (self.cell_seq == seq) & (self.cell_pos <= first - self.window)
            self.cell_pos[dead] = -1
            self.cell_seq[dead] = -1

    def allocate(self, batch: Batch) -> np.ndarray:
        """Claim a cell for each token and record it.

        Why pages: attention sums over cells in cell order, in SIMD lanes by cell index, and
        ggml rounds activations to 8 bits between layers, so a different placement of the
        same K/V can change logits by a whole unit. With pages of N_KV_PAD cells kept in
        position order, a sequence's cells line up exactly as they would alone in the cache
        (other sequences' cells are masked to exact zeros), so batching several sequences
        gives each the very logits it gets alone.
        """
        self._free_out_of_window(batch)
        self._free_empty_pages()
        size = self.page_size
        owner = {(int(s), int(i)): k for k, (s, i) in enumerate(zip(self.page_seq, self.page_index)) if s >= 0}
        cells = np.empty(len(batch), dtype=np.int32)
        claimed: list[int] = []
        for n, (seq, pos) in enumerate(zip(batch.seq_ids.tolist(), batch.positions.tolist())):
            stretch = pos // size
            page = owner.get((seq, stretch))
            if page is None:
                page = self._free_page(after=owner.get((seq, stretch - 1), -1))
                if page is None:
                    for k in claimed:  # nothing is recorded for a batch that does not fit
                        self.page_seq[k] = self.page_index[k] = -1
                    raise CacheFullError(
                        f"KV cache full: no room for {len(batch)} tokens in {self.n_cells} cells ({self.used()} used)"
                    )
                self.page_seq[page], self.page_index[page] = seq, stretch
                owner[(seq, stretch)] = page
                claimed.append(page)
            cells[n] = page * size + pos % size
        self.cell_pos[cells] = batch.positions
        self.cell_seq[cells] = batch.seq_ids
        return cells

    def _free_page(self, after: int) -> int | None:
        """The lowest free page above `after` (keeping a sequence's pages in order), else the lowest."""
        free = np.flatnonzero(self.page_seq < 0)
        if not len(free):
            return None
        above = free[free > after]
        return int(above[0] if len(above) else free[0])

    def _free_empty_pages(self) -> None:
        empty = (self.cell_pos.reshape(-1, self.page_size) < 0).all(axis=1)
        self.page_seq[empty] = -1
        self.page_index[empty] = -1

    def mask(self, batch: Batch, n_kv: int) -> np.ndarray:
        """Additive mask [t, n_kv]: 0 where a token may see a cell, -inf elsewhere."""
        pos = self.cell_pos[None, :n_kv]
        last = batch.positions if batch.visible_until is None else batch.visible_until
        visible = (self.cell_seq[None, :n_kv] == batch.seq_ids[:, None]) & (pos >= 0) & (pos <= last[:, None])
        if self.window is not None:
            visible &= batch.positions[:, None] - pos < self.window
        return np.where(visible, np.float32(0), np.float32(-np.inf))

    def remove(self, seq: int, start: int = 0, end: int | None = None) -> None:
        """Forget positions [start, end) of a sequence (all of it by default)."""
        hit = (self.cell_seq == seq) & (self.cell_pos >= start)
        if end is not None:
            hit &= self.cell_pos < end
        self.cell_pos[hit] = -1
        self.cell_seq[hit] = -1

    def shift(self, seq: int, start: int, end: int, turn_keys: TurnKeys) -> None:
        """Forget positions [start, end) of a sequence and move the later ones down by end - start
        (a context shift): their keys turned by RoPE to the new positions, as llama.cpp and
        Ollama shift a cache, not evaluated again; values are the same wherever they sit.

        The moved K/V also move to the cells their new positions have (see allocate: a
        sequence's position p sits at offset p % page_size of its page), so the sequence lies
        in the cache exactly as one evaluated at those positions would, and batching stays
        exact. One graph gathers every moved row before it writes any.
        """
        offset = end - start
        self.remove(seq, start, end)
        moved = np.flatnonzero((self.cell_seq == seq) & (self.cell_pos >= end))
        if offset <= 0 or not len(moved):
            return
        moved = moved[np.argsort(self.cell_pos[moved])]
        new_positions = self.cell_pos[moved] - offset
        self.cell_pos[moved] = -1
        self.cell_seq[moved] = -1
        n = len(moved)
        targets = self.allocate(Batch(np.zeros(n, np.int32), new_positions, np.full(n, seq, np.int32),
                                      np.zeros(0, np.int32)))
        ctx = self.backend.context()
        try:
            source = ctx.input(moved.astype(np.int32))
            target = ctx.input(targets)
            offsets = ctx.input(np.full(n, -offset, dtype=np.int32))
            for layer in self.layers:
                keys = ctx.view(self.k[layer], 0, self.n_cells).rows(source)  # float32 [n, k_width]
                ctx.store(self.k[layer], target, turn_keys(ctx, layer, keys, offsets))
                if self.v_rows:
                    ctx.store(self.v[layer], target, ctx.view(self.v[layer], 0, self.n_cells).rows(source))
                else:  # V transposed [width, cells]: its cells as rows first
                    width = self.v[layer].shape[0]
                    columns = ctx.view_columns(self.v[layer], 0, self.n_cells, heads=1).reshape(width, self.n_cells)
                    ctx.store_columns(self.v[layer], target, columns.transpose().contiguous().rows(source))
            ctx.compute()
        finally:
            ctx.close()

    def clear(self) -> None:
        """Forget everything."""
        self.cell_pos[:] = -1
        self.cell_seq[:] = -1
        self.page_seq[:] = -1
        self.page_index[:] = -1

    def can_keep(self, seq: int, n: int) -> bool:
        """Whether positions [0, n) of a sequence are all still here, as far as position n
        can see them (a sliding window only needs its last `window` positions)."""
        first = max(0, n - self.window + 1) if self.window else 0
        have = (self.cell_seq == seq) & (self.cell_pos >= first) & (self.cell_pos < n)
        return int(have.sum()) == n - first

    def used(self, seq: int | None = None) -> int:
        """Number of occupied cells (of one sequence, or all)."""
        occupied = self.cell_pos >= 0
        if seq is not None:
            occupied &= self.cell_seq == seq
        return int(occupied.sum())

    # -- one step -------------------------------------------------------------------------
    def plan(self, batch: Batch) -> StepPlan:
        """Claim cells for a batch and work out its mask (no graph yet)."""
        cells = self.allocate(batch)
        # Attend over the used cells rounded up to a multiple of read_pad (see KV_READ_PAD), as
        # llama.cpp pads them: the masked extra cells change nothing, and the dot products run
        # whole SIMD blocks, so logits do not depend on n_kv; and a decode step's graph stays
        # the same for read_pad steps, so it can be reused.
        used = int(np.flatnonzero(self.cell_pos >= 0).max()) + 1
        n_kv = min(self.n_cells, -(-used // self.read_pad) * self.read_pad)
        return StepPlan(cells, self.mask(batch, n_kv), n_kv, batch.attention_groups())

    def bind(self, ctx: Context, plan: StepPlan, prefix: str = "cache") -> None:
        """Make a plan's cells and mask inputs of a context, named for rerun()."""
        cells = ctx.input(plan.cells, name=f"{prefix}.cells")
        self.step = _Step(ctx, cells, ctx.attention_mask(plan.mask, name=f"{prefix}.mask"), plan.n_kv, plan.groups)

    def begin(self, ctx: Context, batch: Batch) -> None:
        """plan() and bind() in one: claim cells for a batch and make its inputs."""
        self.bind(ctx, self.plan(batch))

    def groups(self, layer: int) -> tuple[tuple[int, int], ...] | None:
        """The step's query rows attention computes together (see Batch.attention_groups)."""
        return self.step.groups if self.step is not None else None

    def update(self, ctx: Context, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store a layer's new k/v [t, kv_heads, d]; return the visible k [n, kv_heads, d], v (in
        the layout the backend's attention takes: see Context.attention) and the mask."""
        step = self.step
        if step is None or step.ctx is not ctx:
            raise RuntimeError("KVCache.update() outside the step begun with begin()")
        if layer in step.written:
            raise RuntimeError(f"layer {layer} written twice in one step")
        step.written.add(layer)
        ctx.store(self.k[layer], step.cells, k)
        if self.v_rows:
            ctx.store(self.v[layer], step.cells, v)
        else:
            ctx.store_columns(self.v[layer], step.cells, v)
        return self.read(ctx, layer, k.shape[1])

    def read(self, ctx: Context, layer: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
        """The visible k [n, kv_heads, d], v and mask of a layer written earlier in this step: what
        update() returns, for layers that attend over another layer's K/V (KV sharing)."""
        step = self.step
        if step is None or step.ctx is not ctx or layer not in step.written:
            raise RuntimeError(f"KVCache.read() of layer {layer}, which this step has not written")
        n_kv = step.n_kv
        k_width, v_width = self.k[layer].shape[1], self.v[layer].shape[1 if self.v_rows else 0]
        keys = ctx.view(self.k[layer], 0, n_kv).reshape(n_kv, kv_heads, k_width // kv_heads)
        if self.v_rows:
            values = ctx.view(self.v[layer], 0, n_kv).reshape(n_kv, kv_heads, v_width // kv_heads)
        else:
            values = ctx.view_columns(self.v[layer], 0, n_kv, heads=kv_heads)
        return keys, values, step.mask


class LayerCaches:
    """Several caches behind one interface, each serving some layers (e.g. sliding + global)."""

    def __init__(self, caches: Sequence[KVCache]):
        self.caches = list(caches)
        self.by_layer = {layer: cache for cache in self.caches for layer in cache.layers}

    def plan(self, batch: Batch) -> list[StepPlan]:
        """Each cache's plan for the batch."""
        return [cache.plan(batch) for cache in self.caches]

    def bind(self, ctx: Context, plans: Sequence[StepPlan]) -> None:
        for i, (cache, plan) in enumerate(zip(self.caches, plans)):
            cache.bind(ctx, plan, prefix=f"cache{i}")

    def inputs(self, plans: Sequence[StepPlan]) -> dict[str, np.ndarray]:
        """The named input data of a step's plans, for rerunning a graph made by bind()."""
        out = {}
        for i, plan in enumerate(plans):
            out[f"cache{i}.cells"] = plan.cells
            out[f"cache{i}.mask"] = plan.mask
        return out

    def begin(self, ctx: Context, batch: Batch) -> None:
        self.bind(ctx, self.plan(batch))

    def update(self, ctx: Context, layer: int, k: Tensor, v: Tensor):
        return self.by_layer[layer].update(ctx, layer, k, v)

    def read(self, ctx: Context, layer: int, kv_heads: int):
        return self.by_layer[layer].read(ctx, layer, kv_heads)

    def groups(self, layer: int) -> tuple[tuple[int, int], ...] | None:
        return self.by_layer[layer].groups(layer)

    def remove(self, seq: int, start: int = 0, end: int | None = None) -> None:
        for cache in self.caches:
            cache.remove(seq, start, end)

    def shift(self, seq: int, start: int, end: int, turn_keys: TurnKeys) -> None:
        """KVCache.shift in every cache."""
        for cache in self.caches:
            cache.shift(seq, start, end, turn_keys)

    def clear(self) -> None:
        for cache in self.caches:
            cache.clear()

    def used(self, seq: int | None = None) -> int:
        return max(cache.used(seq) for cache in self.caches)

    def can_keep(self, seq: int, n: int) -> bool:
        return all(cache.can_keep(seq, n) for cache in self.caches)

    def prefix_keep(self, seq: int, items: Sequence, keep: int) -> int:
        """How much of a cached prefix of `items` the sequence can go on from (all of it here;
        a cache holding more than K/V by position may need less)."""
        return keep
