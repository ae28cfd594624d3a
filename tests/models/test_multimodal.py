"""The image contract's bookkeeping: prompt items, batches with image rows, spans, M-RoPE positions."""

from __future__ import annotations

import numpy as np
import pytest

from pollama.kvcache.cache import KVCache
from pollama.models import multimodal
from pollama.models.multimodal import Image, ImageToken
from pollama.nn.batch import Batch, multi_positions_array
from pollama.runner.engine import Part, build_prompt, make_batch


def image(rows: int = 4, dim: int = 3, name: bytes = b"img") -> Image:
    embeds = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) + 1
    return Image(Image.digest_of(name), embeds)


def test_items_compare_by_content_so_a_chats_next_turn_reuses_them():
    a, b, c = image(name=b"x"), image(name=b"x"), image(name=b"y")
    assert ImageToken(9, a, row=1) == ImageToken(9, b, row=1)
    assert ImageToken(9, a, row=1) != ImageToken(9, c, row=1)
    assert ImageToken(9, a, row=1) != ImageToken(9, a, row=2)
    assert ImageToken(9, a, row=1) != 9 and 9 != ImageToken(9, a, row=1)
    assert multimodal.token_ids([1, ImageToken(9, a, row=0), 2]) == [1, 9, 2]


def test_embeds_replace_exactly_the_image_rows():
    img = image()
    items = [5, ImageToken(7, img, row=2), ImageToken(7, img, row=0), 6]
    embeds, keep = multimodal.embeds_for(items, 3)
    np.testing.assert_array_equal(keep[:, 0], [1, 0, 0, 1])
    np.testing.assert_array_equal(embeds[1], img.embeds[2])
    np.testing.assert_array_equal(embeds[2], img.embeds[0])
    assert not embeds[0].any() and not embeds[3].any()
    assert multimodal.embeds_for([5, 6], 3) is None
    with pytest.raises(ValueError, match="width"):
        multimodal.embeds_for(items, 4)


def test_blocks_are_never_split_between_batches():
    img = image()
    block = [ImageToken(7, img, row=i, block=(i, 4)) for i in range(4)]
    items = [1, 2, 3] + block + [4, 5]
    assert multimodal.split_points(items, 0, 5) == 3  # the block starts a batch of its own
    assert multimodal.split_points(items, 3, 5) == 8
    assert multimodal.split_points(items, 0, 7) == 7
    assert multimodal.split_points(items, 0, 100) == len(items)
    with pytest.raises(ValueError, match="needs 4 positions in one batch"):
        multimodal.split_points(items, 3, 3)
    assert multimodal.keep_whole_blocks(items, 5) == 3  # a cached prefix ending inside the block
    assert multimodal.keep_whole_blocks(items, 7) == 7
    np.testing.assert_array_equal(multimodal.block_spans(items, 10), [10, 11, 12, 16, 16, 16, 16, 17, 18])
    assert multimodal.block_spans([1, 2], 0) is None


def test_image_tokens_see_their_whole_image_in_the_cache_mask():
    from pollama.ml.torch.backend import TorchBackend

    img = image()
    items = [1] + [ImageToken(7, img, row=i, block=(i, 3)) for i in range(3)] + [2]
    model = type("M", (), {"dim": 3, "uses_rope_positions": False})()
    batch = make_batch(model, [Part(0, 0, items, "all")])
    cache = KVCache(TorchBackend(), [0], 32, 4, 4)
    mask = cache.plan(batch).mask[:, :5] == 0
    want = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(mask, want)


def test_mrope_positions_follow_the_image_grid():
    img = image(6)
    # A 2x3 grid of merged tokens after two text tokens: t stays, h and w walk the grid, and
    # text after the image resumes at the start plus the grid's larger side.
    grid = [ImageToken(7, img, row=r * 3 + c, rope=(0, r, c), advance=0) for r in range(2) for c in range(3)]
    grid[-1] = ImageToken(7, img, row=5, rope=(0, 1, 2), advance=3)
    items = [1, 2] + grid + [3]
    pos = multimodal.rope_positions(items)
    np.testing.assert_array_equal(pos[:2], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(pos[2:8], [[2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [2, 3, 3], [2, 3, 4]])
    np.testing.assert_array_equal(pos[8], [5, 5, 5])
    assert multimodal.rope_end(items) == 6
    np.testing.assert_array_equal(multi_positions_array(pos[:2]), [0, 1, 0, 1, 0, 1, 0, 0])


def test_make_batch_gathers_parts_of_several_sequences():
    img = image()
    model = type("M", (), {"dim": 3, "uses_rope_positions": True})()
    parts = [Part(0, 5, [4], "last", np.array([[9, 9, 9]], np.int32)),
             Part(1, 0, [1, ImageToken(7, img, row=1)], "none")]
    batch = make_batch(model, parts)
    np.testing.assert_array_equal(batch.tokens, [4, 1, 7])
    np.testing.assert_array_equal(batch.positions, [5, 0, 1])
    np.testing.assert_array_equal(batch.seq_ids, [0, 1, 1])
    np.testing.assert_array_equal(batch.outputs, [0])
    np.testing.assert_array_equal(batch.keep[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(batch.rope_positions, [[9, 9, 9], [0, 0, 0], [1, 1, 1]])
    assert batch.items is not None and batch.visible_until is None
    text = make_batch(type("M", (), {"dim": 3, "uses_rope_positions": False})(), [Part(0, 0, [1, 2], "all")])
    assert text.embeds is None and text.items is None and text.rope_positions is None
    assert isinstance(text, Batch) and list(text.outputs) == [0, 1]


class FakeTokenizer:
    def encode(self, text, add_special=True, parse_special=True):
        return ([0] if add_special else []) + [ord(c) for c in text]


class FakeEngine:
    tokenizer = FakeTokenizer()

    def __init__(self):
        self.encoded = []
        self.model = self

    def encode_image(self, data):
        self.encoded.append(data)
        return image(2, name=data)

    def image_items(self, img):
        return [100, ImageToken(101, img, row=0), ImageToken(101, img, row=1), 102]


def test_prompts_place_images_at_their_tags():
    engine = FakeEngine()
    items = build_prompt(engine, "ab[img-1]c[img-0]", [b"zero", b"one"])
    assert multimodal.token_ids(items) == [0, 97, 98, 100, 101, 101, 102, 99, 100, 101, 101, 102]
    assert engine.encoded == [b"one", b"zero"]
    assert items[4].image.digest == Image.digest_of(b"one")
    # An image first: the BOS still comes first; a tag without an image is an error.
    assert multimodal.token_ids(build_prompt(engine, "[img-0]x", [b"zero"])) == [0, 100, 101, 101, 102, 120]
    with pytest.raises(ValueError, match="invalid image index: 2"):
        build_prompt(engine, "[img-2]", [b"a"])
    assert multimodal.token_ids(build_prompt(engine, "plain", [])) == [0, 112, 108, 97, 105, 110]


def test_one_image_models_start_a_batch_at_each_later_image():
    a, b = image(name=b"a"), image(name=b"b")
    items = [1, 2, ImageToken(7, a), 3, 4, ImageToken(7, b), 5]
    assert multimodal.split_points(items, 0, 100, image_starts_batch=True) == 5  # the first image stays in
    assert multimodal.split_points(items, 5, 100, image_starts_batch=True) == 7
    assert multimodal.split_points(items, 0, 100) == 7
