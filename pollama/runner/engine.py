"""One loaded model: its tokenizer, its K/V cache, and run(): one forward pass of a batch on
a kept compute graph.

Generation is not here: ParallelEngine (parallel.py) is the one decode loop, for the server,
the CLI, bench/ and tests alike. Forward passes of one sequence step by step, for tests and
tools that compare logits with a reference, are pollama.debug.steps.StepEngine's.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pollama import envconfig
from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.ml.base import Backend
from pollama.models import multimodal
from pollama.models.base import TextModel, load_model
from pollama.models.multimodal import ImageToken, Item
from pollama.nn import Batch
from pollama.runner import limits
from pollama.runner.limits import flash_attention_default  # OLLAMA_FLASH_ATTENTION (the server reads it too)
from pollama.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

IMAGE_TAG = re.compile(r"\[img-(\d+)\]")

DEFAULT_NUM_CTX = envconfig.DEFAULT_NUM_CTX
DEFAULT_NUM_BATCH = envconfig.DEFAULT_NUM_BATCH
MAX_GRAPHS = 8  # compute graphs kept for reuse (decode needs one at a time; speculative steps a few sizes)
MAX_DECODE_BATCH = 16  # decode batches up to this many sequences keep their graphs
MAX_CACHED_IMAGES = 8  # encoded images kept by content, for the next turn of a chat


@dataclass
class Part:
    """One sequence's share of a batch: its items from position `start`."""

    seq: int
    start: int
    items: Sequence[Item]
    logits: str = "last"  # "last", "all" or "none": which rows' logits the step returns
    rope: np.ndarray | None = None  # M-RoPE positions [len(items), 3], for models that use them


def make_batch(model: TextModel, parts: Sequence[Part], rows_apart: bool = False) -> Batch:
    """The batch of several sequences' parts, with their images' data when they have any;
    `rows_apart` computes every row as a one-token step would (see Batch.rows_apart)."""
    tokens, positions, seqs, outputs, spans = [], [], [], [], []
    offset = 0
    for part in parts:
        n = len(part.items)
        tokens.extend(multimodal.token_ids(part.items))
        positions.append(np.arange(part.start, part.start + n, dtype=np.int32))
        seqs.append(np.full(n, part.seq, dtype=np.int32))
        if part.logits == "all":
            outputs.extend(range(offset, offset + n))
        elif part.logits == "last":
            outputs.append(offset + n - 1)
        spans.append(multimodal.block_spans(part.items, part.start))
        offset += n
    if not outputs:
        outputs.append(offset - 1)  # a step of prompt chunks only: one row, unused
    positions, seqs = np.concatenate(positions), np.concatenate(seqs)
    batch = Batch(np.asarray(tokens, dtype=np.int32), positions, seqs, np.asarray(outputs, dtype=np.int32),
                  rows_apart=rows_apart)
    items = [item for part in parts for item in part.items]
    if multimodal.has_images(items):
        batch.items = items
        embedded = multimodal.embeds_for(items, model.dim)
        if embedded is not None:
            batch.embeds, batch.keep = embedded
        if any(span is not None for span in spans):
            batch.visible_until = np.concatenate([
                span if span is not None else np.arange(part.start, part.start + len(part.items), dtype=np.int32)
                for span, part in zip(spans, parts)
            ]).astype(np.int32)
    if model.uses_rope_positions:
        batch.rope_positions = np.concatenate([
            part.rope if part.rope is not None else np.repeat(np.arange(part.start, part.start + len(part.items),
                                                                        dtype=np.int32)[:, None], 3, axis=1)
            for part in parts
        ]).astype(np.int32)
    return batch


KV_CACHE_TYPES = {"f16": GGMLType.F16, "f32": GGMLType.F32}


def kv_cache_dtype(name: str | None) -> GGMLType:
    """The K/V cache type: the argument, else OLLAMA_KV_CACHE_TYPE, else f16.

    Like Ollama, a type this engine cannot use (q8_0 and q4_0 need flash attention's quantized
    cache, not here yet) falls back to f16 with a warning rather than failing the load.
    """
    name = (name or envconfig.kv_cache_type() or "f16").strip().lower()
    if name not in KV_CACHE_TYPES:
        log.warning("KV cache type %r is not supported; using f16", name)
        return GGMLType.F16
    return KV_CACHE_TYPES[name]


def exact_gelu_default() -> bool:
    """POLLAMA_EXACT_GELU=1: ggml computes GELU from its formula in float32 rather than from
    llama.cpp's F16 table (transformers' numbers, at a small cost in speed)."""
    return envconfig.exact_gelu()


def make_backend(name: str = "ggml", n_threads: int | None = None, flash_attention: bool | None = None,
                 exact_gelu: bool | None = None) -> Backend:
    """A backend by name: "ggml" (production) or "torch" (reference; needs PyTorch)."""
    if name == "ggml":
        from pollama.ml.ggml.backend import GGMLBackend

        fa = flash_attention_default() if flash_attention is None else flash_attention
        exact = exact_gelu_default() if exact_gelu is None else exact_gelu
        return GGMLBackend(n_threads=n_threads, flash_attention=fa, exact_gelu=exact)
    if name == "torch":
        try:
            from pollama.ml.torch.backend import TorchBackend
        except ImportError as e:  # torch is an optional extra
            raise ValueError(f"the torch backend needs PyTorch: pip install 'pollama[torch]' ({e})") from None
        return TorchBackend(n_threads=n_threads)
    raise ValueError(f"unknown backend {name!r} (ggml or torch)")


def check_context_memory(model: TextModel, backend: Backend, num_ctx: int, num_batch: int, num_parallel: int,
                         dtype: GGMLType) -> None:
    """ModelError, before anything is allocated, when the K/V cache of num_parallel sequences of
    num_ctx tokens and the attention of one batch would take more memory than is free: the
    cache is zeroed at once, so it would be the kernel's OOM killer that answers otherwise."""
    from pollama.errors import ModelError

    try:
        sizes = dict(n_layers=model.n_layers, k_width=model.k_width, v_width=model.v_width, n_heads=model.n_heads)
    except AttributeError:  # a model that does not say its sizes: its cache is its own business
        return
    need = limits.context_memory(**sizes, num_ctx=num_ctx, num_batch=num_batch, num_parallel=num_parallel,
                                 kv_bytes=4 if dtype == GGMLType.F32 else 2,
                                 flash_attention=bool(getattr(backend, "flash_attention", False)))
    free = limits.memory_available()
    if need > free:
        raise ModelError(f"num_ctx {num_ctx} (num_batch {num_batch}, {num_parallel} sequence(s)) needs "
                         f"{limits.gib(need)} of memory for the KV cache and attention, more than the "
                         f"{limits.gib(free)} available")


class Engine:
    """A model, its tokenizer and its cache: run() computes a batch of any sequences' items.

    It keeps no record of what the cache holds: its user does (ParallelEngine's slots,
    StepEngine's sequence 0)."""

    def __init__(
        self,
        path: str | Path,
        backend: str | Backend = "ggml",
        num_ctx: int = DEFAULT_NUM_CTX,
        num_batch: int = DEFAULT_NUM_BATCH,
        num_thread: int | None = None,
        kv_cache_type: str | None = None,
        num_parallel: int = 1,
        exact_gelu: bool | None = None,
    ):
        if num_ctx <= 0 or num_batch <= 0 or num_parallel <= 0:
            raise ValueError("num_ctx, num_batch and num_parallel must be positive")
        start = time.perf_counter_ns()
        self.gguf = GGUFFile(path)
        try:
            self.tokenizer = load_tokenizer(self.gguf.metadata)
            self.backend = make_backend(backend, num_thread, exact_gelu=exact_gelu) if isinstance(backend, str) else backend
            self.model: TextModel = load_model(self.gguf, self.backend)
        except BaseException:
            self.gguf.close()
            raise
        self.num_ctx = num_ctx  # per sequence
        self.num_batch = min(num_batch, num_ctx)
        kv_dtype = kv_cache_dtype(kv_cache_type)
        try:
            check_context_memory(self.model, self.backend, num_ctx, self.num_batch, num_parallel, kv_dtype)
        except BaseException:
            if isinstance(backend, str):  # ours: the caller's own backend stays open
                self.backend.close()
            self.gguf.close()
            raise
        # Room for num_parallel sequences of num_ctx tokens each (ParallelEngine's slots).
        self.cache = self.model.new_cache(
            self.backend, num_ctx, self.num_batch, n_seq=num_parallel, dtype=kv_dtype
        )
        self.graphs: dict[tuple, object] = {}  # reusable step contexts by shape, oldest first
        self.reran_graph = False  # whether the last step reran a kept graph (its time then compares with others')
        self.images: OrderedDict[str, multimodal.Image] = OrderedDict()  # encoded, by digest
        self.load_duration = time.perf_counter_ns() - start

    def close(self) -> None:
        """Free the model's memory."""
        for ctx in self.graphs.values():
            ctx.close()
        self.graphs.clear()
        self.backend.close()
        self.gguf.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- images -----------------------------------------------------------------------------
    def encode_image(self, data: bytes) -> multimodal.Image:
        """The model's encoding of image bytes (kept for a while: a chat resends its images)."""
        if not self.model.vision:
            raise ValueError(f"this model ({self.model.arch}) does not support images")
        digest = multimodal.Image.digest_of(data)
        image = self.images.pop(digest, None)
        if image is None:
            image = self.model.encode_image(self.backend, data)
        self.images[digest] = image
        while len(self.images) > MAX_CACHED_IMAGES:
            self.images.popitem(last=False)
        return image

    def prompt_items(self, text: str, images: Sequence[bytes] = (), add_special: bool = True) -> list[Item]:
        """Tokens of a prompt whose `[img-N]` tags stand for images[N], as the model lays them out."""
        return build_prompt(self, text, images, add_special)

    # -- the forward pass -----------------------------------------------------------------
    def run(self, batch: Batch, plans) -> np.ndarray:
        """The logits of the batch's output rows, its K/V written to the cells `plans` (the
        cache's plan for it) claimed; the caller gives those back if this raises.

        A graph depends only on the batch's sizes: the last few are kept and rerun (decode
        repeats one shape); `reran_graph` says whether this step was one of them."""
        key = (len(batch), len(batch.outputs), tuple(plan.n_kv for plan in plans), batch.attention_groups(), batch.shape_key())
        ctx = self.graphs.pop(key, None)
        self.reran_graph = ctx is not None
        if ctx is not None:
            self.graphs[key] = ctx  # most recently used last
            (logits,) = ctx.rerun({**batch.arrays(), **self.cache.inputs(plans)})
            return logits
        # Only decode graphs (a token per sequence, or a speculative step's few, each an output)
        # recur often enough to keep; a step with images never does.
        reusable = len(batch) == len(batch.outputs) <= MAX_DECODE_BATCH and batch.items is None
        ctx = self.backend.context(reusable=reusable, rows_apart=batch.rows_apart)
        try:
            self.cache.bind(ctx, plans)
            (logits,) = ctx.compute(self.model.forward(ctx, batch, self.cache))
        except BaseException:
            ctx.close()
            raise
        if not ctx.reusable:
            ctx.close()
            return logits
        self.graphs[key] = ctx
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs))).close()
        return logits

    def check_items(self, items: Sequence[Item]) -> None:
        """ValueError for a token outside the vocabulary, or images the model cannot take."""
        vocab = self.model.vocab_size
        bad = [t for t in items if not isinstance(t, ImageToken) and not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        if multimodal.has_images(items):
            if not self.model.vision:
                raise ValueError(f"this model ({self.model.arch}) does not support images")
            if self.model.one_image and any(
                isinstance(a, ImageToken) and isinstance(b, ImageToken) for a, b in zip(items, items[1:])
            ):  # two images with no text between: one message's (Ollama allows one per message)
                raise ValueError("this model only supports one image while more than one image requested")


    def rope_positions(self, items: Sequence[Item]) -> np.ndarray | None:
        """M-RoPE positions [n, 3] of a whole sequence, for models that use them."""
        return multimodal.rope_positions(items) if self.model.uses_rope_positions else None

    def chunks(self, items: Sequence[Item], start: int) -> Iterator[tuple[int, int]]:
        """(start, end) of the batches that evaluate items[start:], never cutting an image's block."""
        while start < len(items):
            end = multimodal.split_points(items, start, self.num_batch, self.model.one_image)
            yield start, end
            start = end

    def keep_prefix(self, seq: int, cached: Sequence[Item], prompt: Sequence[Item]) -> int:
        """How many of the prompt's first items keep the K/V a sequence's cache holds for
        `cached` (the rest of the sequence is dropped from the cache): their common prefix,
        never the prompt's last item (its logits give the first new token), nor part of an
        image's block or less than the cache can keep (a sliding window's)."""
        keep = min(common_prefix(cached, prompt), len(prompt) - 1)
        keep = self.cache.prefix_keep(seq, prompt, multimodal.keep_whole_blocks(prompt, keep))
        if not self.cache.can_keep(seq, keep):
            keep = 0
        self.cache.remove(seq, keep)
        return keep

    def decode_rope(self, position: int, rope_delta: int) -> np.ndarray | None:
        """M-RoPE positions of a generated token at cache position `position`, for models that
        use them (the prompt's images moved its rope position `rope_delta` past it)."""
        if not self.model.uses_rope_positions:
            return None
        return np.full((1, 3), position + rope_delta, dtype=np.int32)

    def shift(self, seq: int, start: int, end: int) -> None:
        """Drop positions [start, end) of a sequence's cache and move the later ones down, their
        keys turned by the model's RoPE (a context shift; see KVCache.shift)."""
        model = self.model
        if not model.can_shift:
            raise ValueError(f"{model.arch} models cannot shift their context")

        def turn(ctx, layer: int, keys, offsets):
            _, kv_heads, head_dim, _ = model.layer_attention_sizes(layer)
            heads = keys.reshape(keys.shape[0], kv_heads, head_dim)
            return model.shift_keys(ctx, layer, heads, offsets)

        self.cache.shift(seq, start, end, turn)



def common_prefix(a: Sequence[Item], b: Sequence[Item]) -> int:
    """How many first items two sequences share."""
    # Compared by slices (at C speed; a draft model compares its whole sequence every step),
    # halving the range that holds the first difference.
    a, b = list(a), list(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, differs = 0, n  # a[:same] == b[:same], and a[same:differs] != b[same:differs]
    while differs - same > 1:
        middle = (same + differs) // 2
        if a[same:middle] == b[same:middle]:
            same = middle
        else:
            differs = middle
    return same


def build_prompt(engine: Engine, text: str, images: Sequence[bytes], add_special: bool = True) -> list[Item]:
    """Tokenize a rendered prompt, putting images[N]'s items where `[img-N]` stands.

    As Ollama's runner: only the first text part gets the tokenizer's special tokens (BOS), a
    tag naming an image that was not sent is an error, and images no tag names are unused.
    """
    items: list[Item] = []
    pieces = IMAGE_TAG.split(text)
    for i, piece in enumerate(pieces):
        if i % 2:
            n = int(piece)
            if n >= len(images):
                raise ValueError(f"invalid image index: {n} (the request has {len(images)} images)")
            items.extend(engine.model.image_items(engine.encode_image(images[n])))
        elif piece or i == 0:
            items.extend(engine.tokenizer.encode(piece, add_special=add_special and i == 0, parse_special=True))
    return items
