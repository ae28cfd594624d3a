"""The backend interface: tensors in PyTorch order, and a per-step context that builds and computes.

Model code sees only what is here. A backend (ml/ggml, ml/torch) implements `Backend`,
`Context` and `Tensor`; shapes are PyTorch order (`[seq, heads, head_dim]`, Linear weight
`[out, in]`), whatever the backend stores inside.

A step goes: `ctx = backend.context()`, inputs with `ctx.input(...)`, ops on tensors, then
`ctx.compute(out)` returns numpy arrays. The ggml backend records ops into a graph and runs
it at `compute`; the torch backend runs each op eagerly. Persistent tensors (weights, KV
cache) are made by the backend and can be used in any context.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from pollama.fs.ggml_types import GGMLType


class BackendError(ValueError):
    """A call into a backend that would be invalid (wrong shapes, types, freed tensors)."""


class RopeMode(enum.IntEnum):
    """How RoPE pairs up the dimensions it rotates (ggml's mode numbers)."""

    NORMAL = 0  # adjacent pairs (x[2i], x[2i+1]): Llama as stored in GGUF
    NEOX = 2  # halves (x[i], x[i + d/2]): GPT-NeoX, Qwen2, Gemma
    # Several positions per token (t, h, w, e), each driving a section of the frequencies:
    MROPE = 8  # Qwen2-VL's text: pairs (i, i + dims/2) as NEOX
    VISION = 24  # Qwen2-VL's vision tower: pairs (i, i + dims), each section's theta from 0

    @property
    def multi(self) -> bool:
        """Whether positions are int32 [4 * t] (all t, all h, all w, all e) rather than [t]."""
        return self in (RopeMode.MROPE, RopeMode.VISION)


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding parameters, as ggml_rope_ext takes them."""

    dims: int  # how many leading dims of each head are rotated
    base: float = 10000.0
    mode: RopeMode = RopeMode.NORMAL
    freq_scale: float = 1.0  # 1 / (linear scaling factor)
    # YaRN: ext_factor > 0 mixes interpolated and extrapolated frequencies.
    original_context: int = 0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # MROPE/VISION: how many frequency slots (of dims/2, or of head_dim/2 for VISION) each
    # position component drives, in order t, h, w, e.
    sections: tuple[int, int, int, int] = (0, 0, 0, 0)

    def for_shift(self) -> Rope:
        """The rotation that moves keys already turned by this RoPE to other positions (a context
        shift turns cached keys by the offset). Rotations add up, but YaRN's magnitude factor
        (attn_factor, times 1 + 0.1 ln(1/freq_scale) when ext_factor is on, as ggml applies it)
        scaled them once already: the shift's rotation must leave their length alone."""
        magnitude = 1.0 + 0.1 * math.log(1.0 / self.freq_scale) if self.ext_factor else 1.0
        return dataclasses.replace(self, attn_factor=1.0 / magnitude)


class Tensor(ABC):
    """A tensor of one backend, in PyTorch dimension order."""

    shape: tuple[int, ...]
    dtype: GGMLType

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # Linear algebra --------------------------------------------------------------------
    @abstractmethod
    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight.T (+ bias): x [..., in], weight [out, in] in any GGUF type.

        A weight with more dims is read as [out, prod(rest)]: a convolution's kernel
        [out, channels, kh, kw] applied to patches flattened in (channel, row, column) order.
        The weight may also be a float32 tensor of the step (e.g. a pooling matrix input).
        """

    @abstractmethod
    def rows(self, index: Tensor) -> Tensor:
        """Gather rows: self [n, d], index int32 [t] -> [t, d] float32; or per batch,
        self [b, n, d], index int32 [b, k] -> [b, k, d] (row index[i, j] of batch i)."""

    @abstractmethod
    def linear_experts(self, weight: Tensor, experts: Tensor, bias: Tensor | None = None) -> Tensor:
        """Each token through its chosen experts' matrices (ggml_mul_mat_id).

        x [t, k, in] (or [t, 1, in]: the same input for every expert), weight [n_experts, out,
        in] in any GGUF type, experts int32 [t, k] (from top_k, or an input) -> [t, k, out]:
        row j of token i is x[i, j] @ weight[experts[i, j]].T (+ bias[experts[i, j]], bias
        [n_experts, out]). Only the chosen experts' matrices are read.
        """

    @abstractmethod
    def top_k(self, k: int) -> Tensor:
        """Indices of the k largest values along the last dim, largest first: int32 [..., k]."""

    # Elementwise -----------------------------------------------------------------------
    @abstractmethod
    def __add__(self, other: Tensor) -> Tensor:
        """Sum; `other` broadcasts when each of its dims is 1 or equal to ours."""

    @abstractmethod
    def __mul__(self, other: Tensor) -> Tensor:
        """Product; `other` broadcasts when each of its dims is 1 or equal to ours."""

    @abstractmethod
    def __sub__(self, other: Tensor) -> Tensor:
        """Difference; `other` broadcasts when each of its dims is 1 or equal to ours."""

    @abstractmethod
    def __truediv__(self, other: Tensor) -> Tensor:
        """Quotient; `other` broadcasts when each of its dims is 1 or equal to ours."""

    @abstractmethod
    def scale(self, factor: float) -> Tensor:
        """Multiply by a constant."""

    @abstractmethod
    def silu(self) -> Tensor:
        """x * sigmoid(x)."""

    @abstractmethod
    def gelu(self) -> Tensor:
        """GELU, tanh approximation (as GGML and gelu_pytorch_tanh)."""

    @abstractmethod
    def gelu_erf(self) -> Tensor:
        """GELU, exact: x/2 * (1 + erf(x/sqrt(2))) (BERT's "gelu", torch's default)."""

    @abstractmethod
    def tanh(self) -> Tensor:
        """Hyperbolic tangent."""

    @abstractmethod
    def sigmoid(self) -> Tensor:
        """1 / (1 + exp(-x))."""

    def quick_gelu(self) -> Tensor:
        """x * sigmoid(1.702 x): CLIP's GELU approximation (Qwen2-VL's vision MLP)."""
        return self * self.scale(1.702).sigmoid()

    def swiglu(self, up: Tensor) -> Tensor:
        """silu(self) * up: the gated linear unit of Llama's MLP (a backend may fuse it)."""
        return self.silu() * up

    def geglu(self, up: Tensor) -> Tensor:
        """gelu(self) * up: the gated linear unit of Gemma's MLP (a backend may fuse it)."""
        return self.gelu() * up

    @abstractmethod
    def swiglu_oai(self, up: Tensor, alpha: float, limit: float) -> Tensor:
        """gpt-oss's gated unit: g * sigmoid(alpha * g) * (u + 1), with g = min(self, limit)
        and u = clamp(up, -limit, limit) (ggml_swiglu_oai)."""

    def softcap(self, cap: float) -> Tensor:
        """cap * tanh(x / cap): bounds logits smoothly (Gemma)."""
        return self.scale(1.0 / cap).tanh().scale(cap)

    # Reductions ------------------------------------------------------------------------
    @abstractmethod
    def softmax(self) -> Tensor:
        """exp(x - max) / sum over the last dim."""

    @abstractmethod
    def sum_rows(self) -> Tensor:
        """Sum over the last dim, kept as a dim of 1: [..., n] -> [..., 1]."""

    # Normalization ---------------------------------------------------------------------
    @abstractmethod
    def rms_norm(self, eps: float) -> Tensor:
        """x / sqrt(mean(x^2) + eps) over the last dim."""

    @abstractmethod
    def layer_norm(self, eps: float) -> Tensor:
        """(x - mean) / sqrt(var + eps) over the last dim."""

    # Shape -----------------------------------------------------------------------------
    @abstractmethod
    def reshape(self, *shape: int) -> Tensor:
        """Same elements in a new shape (makes the tensor contiguous first if needed)."""

    @abstractmethod
    def permute(self, *dims: int) -> Tensor:
        """Reorder dims like torch.permute (a view)."""

    @abstractmethod
    def contiguous(self) -> Tensor:
        """A contiguous copy (or self when already contiguous)."""

    def transpose(self) -> Tensor:
        """[a, b] -> [b, a], contiguous."""
        if self.ndim != 2:
            raise BackendError(f"transpose() needs a 2-D tensor, got {list(self.shape)}")
        return self.permute(1, 0).contiguous()

    @abstractmethod
    def concat(self, other: Tensor, dim: int) -> Tensor:
        """Join two float32 tensors along `dim`; the other dims must be equal."""

    @abstractmethod
    def slice(self, dim: int, start: int, stop: int) -> Tensor:
        """Elements [start, stop) along `dim`, as a contiguous tensor."""

    # Position --------------------------------------------------------------------------
    @abstractmethod
    def rope(self, positions: Tensor, rope: Rope, freq_factors: Tensor | None = None) -> Tensor:
        """Rotate x [seq, heads, head_dim] by positions int32 [seq] (int32 [4 * seq] when
        rope.mode.multi), as ggml_rope_ext / ggml_rope_multi do."""


def check_concat(a: Tensor, b: Tensor, dim: int) -> int:
    """The non-negative dim of a valid concat of a and b; BackendError otherwise."""
    if a.dtype != GGMLType.F32 or b.dtype != GGMLType.F32:
        raise BackendError(f"concat needs float32 tensors, got {a.dtype.name} and {b.dtype.name}")
    if a.ndim != b.ndim or not -a.ndim <= dim < a.ndim:
        raise BackendError(f"concat of {list(a.shape)} and {list(b.shape)} along dim {dim}")
    dim %= a.ndim
    if any(x != y for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i != dim):
        raise BackendError(f"concat of {list(a.shape)} and {list(b.shape)} along dim {dim}: other dims differ")
    return dim


def check_slice(a: Tensor, dim: int, start: int, stop: int) -> int:
    """The non-negative dim of a valid slice; BackendError otherwise."""
    if not -a.ndim <= dim < a.ndim:
        raise BackendError(f"slice dim {dim} of a {a.ndim}-D tensor")
    dim %= a.ndim
    if not 0 <= start < stop <= a.shape[dim]:
        raise BackendError(f"slice [{start}, {stop}) outside [0, {a.shape[dim]}) of dim {dim}")
    return dim


def check_linear_experts(x: Tensor, weight: Tensor, experts: Tensor, bias: Tensor | None) -> None:
    """BackendError unless linear_experts(x, weight, experts, bias) is a valid call."""
    if x.dtype != GGMLType.F32 or x.ndim != 3:
        raise BackendError(f"linear_experts needs a float32 input [tokens, k or 1, in], got {x.dtype.name} {list(x.shape)}")
    if weight.ndim != 3:
        raise BackendError(f"linear_experts needs weights [experts, out, in], got {list(weight.shape)}")
    if experts.dtype != GGMLType.I32 or experts.ndim != 2 or experts.shape[0] != x.shape[0]:
        raise BackendError(f"linear_experts needs int32 experts [{x.shape[0]}, k], got {experts.dtype.name} {list(experts.shape)}")
    if x.shape[1] not in (1, experts.shape[1]):
        raise BackendError(f"linear_experts: input {list(x.shape)} has neither 1 nor {experts.shape[1]} rows per token")
    if weight.shape[2] != x.shape[2]:
        raise BackendError(f"linear_experts: input {list(x.shape)} does not match weights {list(weight.shape)}")
    # (F16 and BF16 biases, as Ollama's gpt-oss files keep theirs, are widened to float32 per step.)
    if bias is not None and (bias.dtype not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) or bias.shape != weight.shape[:2]):
        raise BackendError(f"linear_experts bias must be float {list(weight.shape[:2])}, got {bias.dtype.name} {list(bias.shape)}")


def check_rope_sections(rope: Rope, head_dim: int) -> None:
    """BackendError unless a multi-position rope's sections fit its dims."""
    slots = head_dim // 2 if rope.mode == RopeMode.VISION else rope.dims // 2
    if len(rope.sections) != 4 or any(s < 0 for s in rope.sections) or not 0 < sum(rope.sections) <= slots:
        raise BackendError(f"rope sections {rope.sections} do not fit {slots} frequency slots")
    if rope.mode == RopeMode.VISION and rope.dims * 2 != head_dim:
        raise BackendError(f"vision rope rotates pairs (i, i + dims): dims {rope.dims} must be half of head_dim {head_dim}")


class Recorder:
    """Collects the intermediates a forward pass names with `ctx.record` (debug mode).

    A backend whose `recorder` is set gives it to every context it makes; each compute then
    also computes the recorded tensors (extra graph outputs, only then) and hands them here.
    Without `all_rows`, only the last row of each [tokens, ...] tensor is kept (the last
    token's: the one whose logits a step returns).
    """

    def __init__(self, all_rows: bool = False, log: bool = False):
        self.all_rows = all_rows
        self.log = log  # log each tensor's statistics at DEBUG level (OLLAMA_DEBUG)
        self.values: dict[str, np.ndarray] = {}  # the last computed step's, by name, in order
        self.steps = 0

    @classmethod
    def from_env(cls) -> Recorder | None:
        """A logging recorder when OLLAMA_DEBUG is set (as pollama.errors reads it), else None."""
        from pollama.errors import debug_enabled

        return cls(log=True) if debug_enabled() else None

    def select(self, ctx: Context, tensor: Tensor) -> Tensor:
        """The part of `tensor` to keep: its last row unless all rows are asked for."""
        if self.all_rows or tensor.ndim != 2 or tensor.shape[0] == 1:
            return tensor
        # The last row's index follows from the shape, which a reused graph keeps: constant.
        return tensor.rows(ctx.input(np.array([tensor.shape[0] - 1], dtype=np.int32), constant=True))

    def collect(self, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Take one computed step's recorded arrays."""
        self.values = dict(zip(names, arrays, strict=True))
        self.steps += 1
        if self.log:
            logger = logging.getLogger("pollama.debug")
            for name, array in self.values.items():
                logger.debug("step %d %s %s", self.steps, name, describe(array))


def describe(array: np.ndarray) -> str:
    """One line of a tensor's shape and statistics (min, max, mean, std, finite or not)."""
    a = np.asarray(array, dtype=np.float64)
    finite = bool(np.isfinite(a).all())
    return (f"{list(a.shape)} min={a.min():.6g} max={a.max():.6g} mean={a.mean():.6g} std={a.std():.6g} "
            f"{'finite' if finite else 'NOT FINITE'}")


class Context(ABC):
    """One step's worth of computation on one backend."""

    # Whether rerun() can compute the same graph again with new input data.
    reusable: bool = False
    # Whether linear() computes each row of its input as a product of its own, with the
    # kernels a one-row input gets (see Batch.rows_apart). ggml picks other kernels for
    # several rows (tinyBLAS, repacked gemm), which sum in another order; a backend whose
    # results do not depend on the number of rows may ignore it.
    rows_apart: bool = False
    # The debug recorder (None: record() does nothing, and no graph changes), and what this
    # step recorded, by name (made on the first record()).
    recorder: Recorder | None = None
    recorded: dict[str, Tensor] | None = None

    def record(self, name: str, tensor: Tensor) -> None:
        """Name an intermediate tensor for the debug recorder; a no-op when not recording."""
        if self.recorder is not None:
            if self.recorded is None:
                self.recorded = {}
            self.recorded[name] = self.recorder.select(self, tensor)

    def with_records(self, outputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """The outputs a compute must produce: the asked ones, then the recorded ones (if any)."""
        return (*outputs, *self.recorded.values()) if self.recorded else tuple(outputs)

    def hand_back(self, results: list[np.ndarray], asked: int) -> list[np.ndarray]:
        """The asked outputs of a compute; the recorded rest go to the recorder."""
        if len(results) > asked:
            self.recorder.collect(list(self.recorded), results[asked:])
        return results[:asked]

    @abstractmethod
    def input(self, array: np.ndarray, name: str | None = None, constant: bool = False) -> Tensor:
        """An input tensor from a float32 or int32 numpy array; a name lets rerun() replace it.
        In a reusable context every input is named, or says it is `constant` (the same data at
        every rerun): an unnamed one would go stale, so it is an error."""

    @abstractmethod
    def attention_mask(self, mask: np.ndarray, name: str | None = None) -> Tensor:
        """An additive attention mask [queries, keys] (0 or -inf) in the backend's preferred form."""

    @abstractmethod
    def attention(
        self, q: Tensor, k: Tensor, v_t: Tensor, mask: Tensor | None, scale: float, softcap: float = 0.0,
        groups: Sequence[tuple[int, int]] | None = None, flash: bool | None = None, sinks: Tensor | None = None,
    ) -> Tensor:
        """softmax(softcap(q k^T * scale) + mask) v with grouped-query heads.

        q [t, heads, d], k [n, kv_heads, d] -> [t, heads * dv]. V is transposed, v_t
        [kv_heads, dv, n] (as `view_columns` gives it: the layout llama.cpp keeps V in), or,
        when the backend does flash attention, rows [n, kv_heads, dv] (as `view` gives it).
        `flash` asks for the fused kernel (V then as rows) or not, whatever the backend's
        default. `mask` None: every query sees every key (an encoder's full attention, with no [t, n]
        array to build). `groups` ((first row, rows), ...) covering q's rows asks for each group to be computed
        on its own, exactly as if it were the whole batch (several sequences in one batch).
        `sinks` float32 [heads]: a learned logit per head that joins each row's softmax as one
        more key with no value (gpt-oss), so a head can give part of its attention to nothing.
        """

    @abstractmethod
    def view(self, tensor: Tensor, start: int, length: int) -> Tensor:
        """Rows [start, start+length) of a persistent tensor along its first dim (no copy)."""

    @abstractmethod
    def store(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        """Write rows: cache[cells[i]] = values[i]; cache [n_cells, ...], values [t, ...]."""

    @abstractmethod
    def store_columns(self, cache: Tensor, cells: Tensor, values: Tensor) -> None:
        """Write columns: cache[:, cells[i]] = values[i]; cache [width, n_cells], values [t, width]."""

    @abstractmethod
    def view_columns(self, cache: Tensor, start: int, length: int, heads: int) -> Tensor:
        """Columns [start, start+length) of a persistent [width, n_cells] tensor as [heads, width / heads, length]."""

    @abstractmethod
    def compute(self, *outputs: Tensor) -> list[np.ndarray]:
        """Run everything built so far and return the outputs as float32 numpy arrays."""

    def rerun(self, arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Compute the graph again with new data for named inputs (same shapes); the outputs."""
        raise NotImplementedError(f"{type(self).__name__} cannot rerun a graph")

    def close(self) -> None:
        """Free what the step allocated."""

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(ABC):
    """A device with its kernels: loads weights, allocates caches, makes contexts."""

    name: str
    # Given to every context made (debug recording); backends set it from OLLAMA_DEBUG.
    recorder: Recorder | None = None
    # With flash attention, attention() takes V as rows [n, kv_heads, dv] (and KV caches keep
    # it so); without, V transposed [kv_heads, dv, n], as llama.cpp keeps it then.
    flash_attention: bool = False

    @abstractmethod
    def load(
        self, gguf, names: Sequence[str] | None = None, gathered: Collection[str] = ()
    ) -> Mapping[str, Tensor]:
        """Weights of an open GGUFFile (all tensors, or the named ones), by GGUF name.

        `gathered` names the weights that `rows()` will read (embeddings): a backend must
        keep those in a layout that supports row lookup, not only matmul.
        """

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: GGMLType, layer: int | None = None) -> Tensor:
        """A persistent tensor filled with zeros (a KV cache); `layer` says whose cache it is, so
        that it lives on the device that layer's weights are on."""

    @abstractmethod
    def context(self, reusable: bool = False, rows_apart: bool = False) -> Context:
        """A fresh context for one step; `reusable` asks for one that rerun() can compute again
        (the context then says whether the backend could make it so); `rows_apart` makes its
        matmuls compute row by row (see Context.rows_apart)."""

    def memory(self) -> tuple[int, int]:
        """(total, on a GPU device) bytes of weights and caches, as Ollama's ps reports a model:
        total equals the device's part once every layer is there. (0, 0): not counted."""
        return 0, 0

    def close(self) -> None:
        """Release weights and buffers."""
