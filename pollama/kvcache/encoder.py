"""The encoder cache: cross-attention K/V of a sequence's image, computed once and kept.

Cross-attention (mllama) attends from text to an image's states, which do not depend on
position: each cross layer's K and V are made once, in the step that reaches the image, and
every later step of the sequence reads them. As Ollama's EncoderCache, one image per sequence
and one such sequence per batch: a later image (the engine starts a batch at each one)
replaces the earlier, as the text after it reads only it, and removing the image's position
from the sequence forgets it.

`WithEncoder` puts it beside the causal caches of the self-attention layers, so the engine
plans, binds and reruns steps through one object; the encoder's part of a step is a plan like
theirs (its `n_kv` says what the graph does with the image, so a graph is reused only for a
step that does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache.cache import LayerCaches
from pollama.ml.base import Backend, Context, Tensor
from pollama.nn.batch import Batch


@dataclass
class _Image:
    """The image a sequence holds: which, where, and how many of its state rows text may see."""

    digest: str
    position: int  # of the image's token in the sequence: text from here on sees the image
    visible: int  # state rows of real tiles (the rest are padding tiles)


@dataclass
class EncoderPlan:
    """The encoder's part of a step: whether cross layers run, and their per-row inputs."""

    n_kv: tuple  # what the graph does: () to skip cross layers, else (seq, new image or not)
    seq: int = -1
    states: np.ndarray | None = None  # the image's states, when this step makes its K/V
    mask: np.ndarray | None = None  # float32 [t, rows] additive
    keep: np.ndarray | None = None  # float32 [t, 1]: 1 for the rows that read the image, 0 for the others

    @property
    def active(self) -> bool:
        return bool(self.n_kv)


class EncoderCache:
    """K/V [rows, width] per cross layer for each sequence's image."""

    def __init__(self, backend: Backend, layers: Sequence[int], rows: int, k_width: int, v_width: int,
                 dtype: GGMLType = GGMLType.F16):
        self.backend = backend
        self.layers = list(layers)
        self.rows, self.k_width, self.v_width, self.dtype = rows, k_width, v_width, dtype
        self.v_rows = backend.flash_attention  # V as rows for flash attention, else transposed
        self.images: dict[int, _Image] = {}
        self.k: dict[int, dict[int, Tensor]] = {}  # seq -> layer -> tensor, made on a sequence's first image
        self.v: dict[int, dict[int, Tensor]] = {}
        self.step: tuple[Context, EncoderPlan, dict[str, Tensor]] | None = None

    # -- bookkeeping ----------------------------------------------------------------------
    def plan(self, batch: Batch, image_of) -> EncoderPlan:
        """The step's plan; `image_of(item)` gives (digest, states, visible rows) of an image item, else None."""
        t = len(batch)
        found: dict[int, tuple[int, tuple]] = {}
        for i, item in enumerate(batch.items or ()):
            image = image_of(item)
            if image is None:
                continue
            seq = int(batch.seq_ids[i])
            if seq in found and found[seq][1][0] != image[0]:
                raise ValueError("this model only supports one image while more than one image requested")
            found.setdefault(seq, (i, image))
        seqs = [int(s) for s in dict.fromkeys(batch.seq_ids.tolist())]
        with_image = [s for s in seqs if s in found or s in self.images]
        if not with_image:
            return EncoderPlan(n_kv=())
        if len(with_image) > 1:
            raise ValueError("only one sequence with an image can be evaluated at a time (num_parallel 1)")
        seq = with_image[0]
        states = None
        if seq in found:
            i, (digest, states, visible) = found[seq]
            self.images[seq] = _Image(digest, int(batch.positions[i]), visible)
        image = self.images[seq]
        # Text from the image on reads the image's real tiles. The other rows (text before the
        # image, other sequences) get a harmless mask and their outputs are multiplied by 0.
        after = (batch.seq_ids == seq) & (batch.positions >= image.position)
        mask = np.zeros((t, self.rows), dtype=np.float32)
        mask[np.ix_(after, np.arange(image.visible, self.rows))] = -np.inf
        return EncoderPlan(n_kv=(seq, states is not None), seq=seq, states=states, mask=mask,
                           keep=after.astype(np.float32)[:, None])

    def remove(self, seq: int, start: int = 0, end: int | None = None) -> None:
        """Forget a sequence's image when its position is removed."""
        image = self.images.get(seq)
        if image is not None and image.position >= start and (end is None or image.position < end):
            del self.images[seq]

    def clear(self) -> None:
        self.images.clear()

    # -- one step -------------------------------------------------------------------------
    def bind(self, ctx: Context, plan: EncoderPlan, prefix: str = "encoder") -> None:
        inputs: dict[str, Tensor] = {}
        if plan.active:
            inputs["mask"] = ctx.attention_mask(plan.mask, name=f"{prefix}.mask")
            inputs["keep"] = ctx.input(plan.keep, name=f"{prefix}.keep")
            if plan.states is not None:
                inputs["states"] = ctx.input(np.ascontiguousarray(plan.states, dtype=np.float32), name=f"{prefix}.states")
                inputs["cells"] = ctx.input(np.arange(self.rows, dtype=np.int32), name=f"{prefix}.cells")
        self.step = (ctx, plan, inputs)

    @staticmethod
    def inputs(plan: EncoderPlan, prefix: str = "encoder") -> dict[str, np.ndarray]:
        if not plan.active:
            return {}
        out = {f"{prefix}.mask": plan.mask, f"{prefix}.keep": plan.keep}
        if plan.states is not None:
            out[f"{prefix}.states"] = plan.states
        return out

    def _current(self, ctx: Context) -> tuple[EncoderPlan, dict[str, Tensor]]:
        if self.step is None or self.step[0] is not ctx:
            raise RuntimeError("EncoderCache used outside the step it was bound to")
        return self.step[1], self.step[2]

    def active(self, ctx: Context) -> bool:
        """Whether this step runs the cross layers (a sequence of the batch has an image)."""
        return self._current(ctx)[0].active

    def states(self, ctx: Context) -> Tensor | None:
        """The image's states when this step makes its K/V (else None: they are cached)."""
        return self._current(ctx)[1].get("states")

    def row_inputs(self, ctx: Context) -> tuple[Tensor, Tensor]:
        """(mask [t, rows], keep [t, 1]) of the step."""
        inputs = self._current(ctx)[1]
        return inputs["mask"], inputs["keep"]

    def update(self, ctx: Context, layer: int, kv_heads: int, k: Tensor | None = None,
               v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Store a layer's new k/v [rows, kv_heads, d] when given; the cached k [rows, kv_heads, d]
        and v (in the layout attention takes: see Context.attention)."""
        plan, inputs = self._current(ctx)
        seq = plan.seq
        if seq not in self.k:
            v_shape = (self.rows, self.v_width) if self.v_rows else (self.v_width, self.rows)
            self.k[seq] = {i: self.backend.zeros((self.rows, self.k_width), self.dtype) for i in self.layers}
            self.v[seq] = {i: self.backend.zeros(v_shape, self.dtype) for i in self.layers}
        kc, vc = self.k[seq][layer], self.v[seq][layer]
        if k is not None:
            ctx.store(kc, inputs["cells"], k)
            if self.v_rows:
                ctx.store(vc, inputs["cells"], v)
            else:
                ctx.store_columns(vc, inputs["cells"], v)
        keys = ctx.view(kc, 0, self.rows).reshape(self.rows, kv_heads, self.k_width // kv_heads)
        if self.v_rows:
            values = ctx.view(vc, 0, self.rows).reshape(self.rows, kv_heads, self.v_width // kv_heads)
        else:
            values = ctx.view_columns(vc, 0, self.rows, heads=kv_heads)
        return keys, values


class WithEncoder(LayerCaches):
    """Causal caches for the self-attention layers and an encoder cache for the cross layers."""

    def __init__(self, caches, encoder: EncoderCache, image_of):
        super().__init__(caches)
        self.encoder = encoder
        self.image_of = image_of

    def plan(self, batch: Batch) -> list:
        encoder = self.encoder.plan(batch, self.image_of)  # first: it may refuse the batch
        return [*super().plan(batch), encoder]

    def bind(self, ctx: Context, plans) -> None:
        super().bind(ctx, plans[:-1])
        self.encoder.bind(ctx, plans[-1])

    def inputs(self, plans) -> dict[str, np.ndarray]:
        return {**super().inputs(plans[:-1]), **self.encoder.inputs(plans[-1])}

    def remove(self, seq: int, start: int = 0, end: int | None = None) -> None:
        super().remove(seq, start, end)
        self.encoder.remove(seq, start, end)

    def prefix_keep(self, seq: int, items, keep: int) -> int:
        """Text after the kept prefix reads the last image before it: when that is not the image
        whose K/V are held (a later one was, or none), go on from the image itself."""
        last = next((i for i in range(keep - 1, -1, -1) if self.image_of(items[i]) is not None), None)
        if last is None:
            return keep
        held = self.encoder.images.get(seq)
        if held is None or held.position != last or held.digest != self.image_of(items[last])[0]:
            return last
        return keep

    def clear(self) -> None:
        super().clear()
        self.encoder.clear()

