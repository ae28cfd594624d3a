"""KV cache bookkeeping: who sees what (causal, sliding window, several sequences), range
removal, and sliding-window eviction giving the same results as keeping every cell."""

from __future__ import annotations

import numpy as np
import pytest
from realmodels import real_model

from pollama.errors import CacheFullError
from pollama.kvcache import KV_READ_PAD, N_KV_PAD, KVCache, LayerCaches
from pollama.ml.ggml.backend import GGMLBackend
from pollama.nn import Batch


@pytest.fixture(scope="module")
def backend():
    b = GGMLBackend(n_threads=2)
    yield b
    b.close()


def visible(cache: KVCache, batch: Batch, n_kv: int) -> set[tuple[int, int]]:
    """(token index, cell) pairs the mask lets through."""
    mask = cache.mask(batch, n_kv)
    return {(int(t), int(c)) for t, c in zip(*np.nonzero(mask == 0))}


def brute_force(cache: KVCache, batch: Batch, n_kv: int) -> set[tuple[int, int]]:
    out = set()
    for t in range(len(batch)):
        for c in range(n_kv):
            pos, seq = cache.cell_pos[c], cache.cell_seq[c]
            if pos < 0 or seq != batch.seq_ids[t] or pos > batch.positions[t]:
                continue
            if cache.window is not None and batch.positions[t] - pos >= cache.window:
                continue
            out.add((t, c))
    return out


@pytest.mark.parametrize("window", [None, 3])
def test_mask_matches_brute_force_with_two_sequences(backend, window):
    cache = KVCache(backend, [0], n_cells=64, k_width=4, v_width=4, window=window)
    a = Batch.single(range(5), 0, seq=0)
    cache.allocate(a)
    b = Batch.single(range(4), 0, seq=1)
    cache.allocate(b)
    # Next step: two more tokens of sequence 0 and one of sequence 1, in one batch.
    step = Batch(np.array([7, 8, 9], np.int32), np.array([5, 6, 4], np.int32), np.array([0, 0, 1], np.int32), np.array([2], np.int32))
    cache.allocate(step)
    assert visible(cache, step, 64) == brute_force(cache, step, 64)
    assert (0, 0) in visible(cache, step, 64) or window is not None  # token at pos 5 sees pos 0 only without a window


def test_remove_range_and_reuse(backend):
    cache = KVCache(backend, [0], n_cells=8, k_width=4, v_width=4, page_size=1, read_pad=1)
    cells = cache.allocate(Batch.single(range(6), 0))
    assert list(cells) == [0, 1, 2, 3, 4, 5]
    cache.remove(0, 2, 4)
    assert cache.used(0) == 4 and list(cache.cell_pos[:6]) == [0, 1, -1, -1, 4, 5]
    again = cache.allocate(Batch.single([1, 2], 2))  # refill the hole, lowest cells first
    assert list(again) == [2, 3]
    with pytest.raises(CacheFullError):
        cache.allocate(Batch.single(range(3), 6))
    cache.remove(0)
    assert cache.used() == 0


def test_pages_place_each_sequence_as_if_it_were_alone(backend):
    """Position p of any sequence sits at offset p % 32 of a page, its pages in position order."""
    cache = KVCache(backend, [0], n_cells=4 * N_KV_PAD, k_width=4, v_width=4)
    cache.allocate(Batch.single(range(40), 0, seq=0))  # pages 0, 1
    cache.allocate(Batch.single(range(3), 0, seq=1))  # page 2
    step = Batch(np.array([1, 2], np.int32), np.array([40, 3], np.int32), np.array([0, 1], np.int32), np.array([0, 1], np.int32))
    assert list(cache.allocate(step)) == [N_KV_PAD + 8, 2 * N_KV_PAD + 3]
    for seq in (0, 1):
        cells = np.flatnonzero(cache.cell_seq == seq)
        assert (cells % N_KV_PAD == cache.cell_pos[cells] % N_KV_PAD).all()
        assert (np.diff(cache.cell_pos[cells]) > 0).all()  # position order = cell order
    cache.remove(0)  # a freed page is reused, lowest first
    assert list(cache.allocate(Batch.single([5], 0, seq=2))) == [0]


def test_a_batch_that_does_not_fit_claims_nothing(backend):
    cache = KVCache(backend, [0], n_cells=2 * N_KV_PAD, k_width=4, v_width=4)
    cache.allocate(Batch.single(range(N_KV_PAD), 0, seq=0))
    before = (cache.cell_pos.copy(), cache.page_seq.copy())
    with pytest.raises(CacheFullError):  # seq 1 takes the last page, seq 2 finds none
        cache.allocate(Batch(np.zeros(2, np.int32), np.zeros(2, np.int32), np.array([1, 2], np.int32), np.array([1], np.int32)))
    assert (cache.cell_pos == before[0]).all() and (cache.page_seq == before[1]).all()


def test_sliding_window_frees_cells_out_of_reach(backend):
    cache = KVCache(backend, [0], n_cells=6, k_width=4, v_width=4, window=4, page_size=2, read_pad=2)
    for pos in range(0, 40, 2):  # 20 steps of 2 tokens: 40 positions through 6 cells
        cache.allocate(Batch.single([1, 2], pos))
    kept = sorted(int(p) for p in cache.cell_pos if p >= 0)
    assert kept[-4:] == [36, 37, 38, 39] and min(kept) >= 36 - 2


class KeepEveryCell(KVCache):
    """The reference: a window cache that masks old positions but never frees their cells."""

    def _free_out_of_window(self, batch: Batch) -> None:
        pass


def run(model, backend, cache, tokens, chunk):
    """Logits of the last token after feeding `tokens` in chunks, then of 20 greedy steps."""
    out, pos = [], 0
    while pos < len(tokens):
        part = tokens[pos : pos + chunk]
        batch = Batch.single(part, pos)
        with backend.context() as ctx:
            cache.begin(ctx, batch)
            (logits,) = ctx.compute(model.forward(ctx, batch, cache))
        pos += len(part)
    out.append(logits[-1])
    for _ in range(20):
        token = int(np.argmax(out[-1]))
        batch = Batch.single([token], pos)
        with backend.context() as ctx:
            cache.begin(ctx, batch)
            (logits,) = ctx.compute(model.forward(ctx, batch, cache))
        out.append(logits[-1])
        pos += 1
    return np.array(out)


def test_gemma3_window_cache_equals_keeping_every_cell():
    """Past its 512-token window, Gemma 3's small local cache gives what a full cache gives.

    On the float32 torch backend: ggml's 8-bit activation quantization turns any reordering
    of the cells into ~1 logit of noise, which would hide a wrong eviction.
    """
    from pollama.fs.gguf import GGUFFile
    from pollama.ml.torch.backend import TorchBackend
    from pollama.models.base import load_model

    backend = TorchBackend()
    with GGUFFile(real_model("gemma3-270m")) as gguf:
        model = load_model(gguf, backend)
        assert model.window == 512
        tokens = [int(t) for t in np.random.default_rng(0).integers(100, 20000, 700)]
        small = model.new_cache(backend, n_ctx=1024, n_batch=128)
        local = [c for c in small.caches if c.window]
        # Evicts: far fewer cells than the context (rounded up to whole blocks of KV_READ_PAD).
        assert local and local[0].n_cells == -(-(512 + 128 + N_KV_PAD) // KV_READ_PAD) * KV_READ_PAD < 1024
        full = LayerCaches([KeepEveryCell(backend, c.layers, 1024, model.k_width, model.v_width, window=c.window) for c in small.caches])
        got = run(model, backend, small, tokens, 128)
        want = run(model, backend, full, tokens, 128)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
