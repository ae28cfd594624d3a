"""What every text model shares: reading hyper-parameters from GGUF, finding the class, the cache."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

from pollama.fs.ggml_types import GGMLType
from pollama.kvcache import N_KV_PAD, KVCache, LayerCaches, pages_for
from pollama.ml.base import Backend, Context, Tensor
from pollama.models import discovery
from pollama.errors import ModelError
from pollama.nn import Batch, Embedding, Linear, Module, Weights, load_weights

_REGISTRY: dict[str, type[TextModel]] = {}


def register(arch: str) -> Callable[[type[TextModel]], type[TextModel]]:
    """Class decorator: the model for GGUF files whose general.architecture is `arch` (its folder's
    name, or an alias in models/discovery.py)."""

    def add(cls: type[TextModel]) -> type[TextModel]:
        _REGISTRY[arch] = cls
        cls.arch = arch
        return cls

    return add


def architectures() -> list[str]:
    """Every architecture name its folders register (models/discovery.py)."""
    for name in discovery.folders():
        discovery.import_folder(name)
    return sorted(_REGISTRY)


def model_class(arch: str) -> type[TextModel]:
    """The model class for an architecture, found from its folder; ModelError if there is none."""
    if arch not in _REGISTRY:
        discovery.import_folder(discovery.folder_for(arch))
    cls = _REGISTRY.get(arch)
    if cls is None:
        raise ModelError(f"unknown model architecture {arch!r} (supported: {', '.join(architectures())})")
    return cls


class Config:
    """GGUF hyper-parameters of one architecture: `cfg.int("block_count")` reads `<arch>.block_count`."""

    _MISSING = object()

    def __init__(self, metadata: Mapping[str, Any], arch: str):
        self.metadata = metadata
        self.arch = arch

    def _get(self, key: str, default: Any) -> tuple[Any, str, bool]:
        """(value, full key, whether the file had it); a missing key without default raises."""
        full = key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"
        if full in self.metadata:
            return self.metadata[full], full, True
        if default is self._MISSING:
            raise ModelError(f"model file lacks the key {full!r}")
        return default, full, False

    def int(self, key: str, default: Any = _MISSING) -> int:
        value, full, found = self._get(key, default)
        if found and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ModelError(f"key {full!r} must be a non-negative integer, got {value!r}")
        return value

    def float(self, key: str, default: Any = _MISSING) -> float:
        value, full, found = self._get(key, default)
        if found:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelError(f"key {full!r} must be a number, got {value!r}")
            # A norm's epsilon below zero (or NaN) fails an assert in ggml, which aborts the
            # process; a RoPE base at or below zero turns every position into NaN.
            if not math.isfinite(value):
                raise ModelError(f"key {full!r} must be a finite number, got {value!r}")
            if full.endswith("epsilon") and value < 0:
                raise ModelError(f"key {full!r} must not be negative, got {value!r}")
            if full.endswith("freq_base") and value <= 0:
                raise ModelError(f"key {full!r} must be positive, got {value!r}")
            if full.endswith("scaling.factor") and value < 0:
                raise ModelError(f"key {full!r} must not be negative, got {value!r}")
        return float(value) if value is not None else None

    def str(self, key: str, default: Any = _MISSING) -> str:
        value, full, found = self._get(key, default)
        if found and not isinstance(value, str):
            raise ModelError(f"key {full!r} must be a string, got {value!r}")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value, full, found = self._get(key, default)
        if found and not isinstance(value, bool):
            raise ModelError(f"key {full!r} must be a boolean, got {value!r}")
        return value

    def list(self, key: str, default: Any = _MISSING) -> list:
        value, full, found = self._get(key, default)
        if found and not isinstance(value, list):
            raise ModelError(f"key {full!r} must be an array, got {value!r}")
        return value


def positive(value: int, name: str) -> int:
    """A hyper-parameter that must be > 0 (so a zero in a hostile file cannot divide by zero)."""
    if value <= 0:
        raise ModelError(f"{name} must be positive, got {value}")
    return value


class TextModel(Module):
    """A decoder-only language model: tokens in, logits out, K/V kept in a cache.

    Its weights are annotated attributes named as in GGUF (nn.Module), read by load_weights().
    """

    token_embd: Embedding
    output: Optional[Linear]  # absent: tied to token_embd

    arch: str
    # Weights read with rows() (embedding tables), so the backend keeps them gatherable.
    gathered: tuple[str, ...] = ("token_embd.weight",)

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int
    n_ctx_train: int
    vocab_size: int

    def __init__(self, cfg: Config, weights: Weights):
        raise NotImplementedError

    def load_weights(self, w: Weights, **hp) -> None:
        """Read every declared weight not set yet (nn.load_weights). A model whose `output` is
        absent computes its logits with the embedding table (tied embeddings), whose rows are
        then the vocabulary."""
        load_weights(self, w, **hp)
        if self.output is None:
            self.output = Linear(self.token_embd.weight)
        self.vocab_size = self.output.out_features

    def read_dims(self, cfg: Config, head_dim: int | None = None) -> None:
        """The sizes every decoder has (layers, width, heads, head dims), checked for sense."""
        self.n_layers = positive(cfg.int("block_count"), "block_count")
        self.dim = positive(cfg.int("embedding_length"), "embedding_length")
        self.n_heads = positive(cfg.int("attention.head_count"), "attention.head_count")
        self.n_kv_heads = positive(cfg.int("attention.head_count_kv", self.n_heads), "attention.head_count_kv")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"head_count {self.n_heads} is not a multiple of head_count_kv {self.n_kv_heads}")
        self.head_dim = positive(cfg.int("attention.key_length", head_dim or self.dim // self.n_heads), "attention.key_length")
        self.v_head_dim = positive(cfg.int("attention.value_length", self.head_dim), "attention.value_length")

    @property
    def k_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def v_width(self) -> int:
        return self.n_kv_heads * self.v_head_dim

    def forward(self, ctx: Context, batch: Batch, cache) -> Tensor:
        """Logits [len(batch.outputs), vocab] for the batch, reading and writing the cache."""
        raise NotImplementedError

    def layer_attention_sizes(self, layer: int) -> tuple[int, int, int, int]:
        """(heads, K/V heads, key size, value size) of a layer: the model's, unless its layers differ."""
        kv_heads, v_head_dim = getattr(self, "n_kv_heads", None), getattr(self, "v_head_dim", None)
        return self.n_heads, kv_heads or self.n_heads, self.head_dim, v_head_dim or self.head_dim

    # -- context shift (kvcache.KVCache.shift) ----------------------------------------------
    @property
    def can_shift(self) -> bool:
        """Whether a full context may drop old positions and move the later ones down, their
        cached keys turned to the new positions. Not with M-RoPE, whose images hold several
        positions per token, nor with an encoder cache tied to its image's position (llama.cpp
        shifts neither), nor in a model that does not say how its keys turn (one RoPE, `rope`,
        or its own shift_keys)."""
        turns_keys = hasattr(self, "rope") or type(self).shift_keys is not TextModel.shift_keys
        return turns_keys and not self.uses_rope_positions and not self.one_image

    def shift_keys(self, ctx: Context, layer: int, keys: Tensor, offsets: Tensor) -> Tensor:
        """Cached keys [n, kv_heads, head_dim] of a layer turned as RoPE turns keys whose
        positions moved by offsets (int32 [n]): the model's own rotation, without its YaRN
        magnitude again (Rope.for_shift). A model with several RoPEs picks the layer's."""
        return keys.rope(offsets, self.rope.for_shift(), getattr(self, "rope_freqs", None))

    # -- images (models/multimodal.py) ----------------------------------------------------
    # Whether this model (as loaded: a file may lack the vision tower) takes images.
    vision: bool = False
    # Whether forward() reads batch.multi_positions() (M-RoPE): the engine then makes them.
    uses_rope_positions: bool = False
    # At most one image per sequence, and one sequence at a time (mllama's encoder cache).
    one_image: bool = False

    def preprocess(self, data: bytes):
        """Decode image bytes and prepare them as the vision tower takes them (the model's own
        image object: pixels, tiles, grid), as encode_image() does first."""
        raise ModelError(f"{self.arch} models do not take images")

    def encode_image(self, backend: Backend, data: bytes):
        """Run the vision tower on image bytes: a multimodal.Image."""
        raise ModelError(f"{self.arch} models do not take images")

    def image_items(self, image) -> list:
        """The prompt items (tokens and multimodal.ImageToken) an encoded image occupies."""
        raise ModelError(f"{self.arch} models do not take images")

    def new_cache(
        self, backend: Backend, n_ctx: int, n_batch: int, n_seq: int = 1, dtype: GGMLType = GGMLType.F16
    ) -> LayerCaches:
        """A causal cache for every layer: n_seq sequences of up to n_ctx tokens, K/V in `dtype`."""
        cells = pages_for(n_ctx) * n_seq
        return LayerCaches([KVCache(backend, range(self.n_layers), cells, self.k_width, self.v_width, dtype=dtype)])

    def windowed_cache(
        self, backend: Backend, is_local: Sequence[bool], window: int, n_ctx: int, n_batch: int, n_seq: int,
        dtype: GGMLType,
    ) -> LayerCaches:
        """A cache for models that mix layer kinds: global layers keep every position, local
        (sliding-window) layers only the window (plus one batch)."""
        local = [i for i in range(self.n_layers) if is_local[i]]
        global_ = [i for i in range(self.n_layers) if not is_local[i]]
        caches = []
        if global_:
            caches.append(KVCache(backend, global_, pages_for(n_ctx) * n_seq, self.k_width, self.v_width, dtype=dtype))
        if local:
            # The live positions (the window before a batch, and the batch) can straddle one
            # more page than they fill.
            cells = (pages_for(min(n_ctx, window + n_batch)) + N_KV_PAD) * n_seq
            caches.append(KVCache(backend, local, cells, self.k_width, self.v_width, window=window, dtype=dtype))
        return LayerCaches(caches)


def load_model(gguf, backend: Backend) -> TextModel:
    """Build the registered model for an open GGUFFile on a backend."""
    arch = gguf.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{gguf.path}: general.architecture is missing")
    cls = model_class(arch)
    cfg = Config(gguf.metadata, arch)
    tensors = backend.load(gguf, gathered=cls.gathered)
    model = cls(cfg, Weights(tensors, str(gguf.path)))
    check_attention_sizes(model, arch)
    return model


def check_attention_sizes(model: TextModel, arch: str) -> None:
    """Head counts, head sizes and RoPE dimensions that do not fit the attention weights: a
    load error naming the keys, rather than a failed reshape at every request."""
    heads, head_dim = getattr(model, "n_heads", None), getattr(model, "head_dim", None)
    if not heads or not head_dim:
        return
    # (per layer: Gemma 4's differ; a model that is no TextModel, BERT, has one size for all)
    sizes = getattr(model, "layer_attention_sizes", None) or (lambda i: TextModel.layer_attention_sizes(model, i))
    for i, layer in enumerate(getattr(model, "blk", ())):
        heads, kv_heads, head_dim, v_head_dim = sizes(i)
        keys = (f"{arch}.attention.head_count {heads}, head_count_kv {kv_heads}, key_length {head_dim}, "
                f"value_length {v_head_dim}")
        widths = {"attn_q": heads * head_dim, "attn_k": kv_heads * head_dim, "attn_v": kv_heads * v_head_dim}
        for name, width in widths.items():
            linear = getattr(layer, name, None)
            if isinstance(linear, Linear) and linear.out_features != width:
                raise ModelError(f"blk.{i}.{name}.weight has {linear.out_features} outputs where the model's "
                                 f"hyper-parameters ({keys}) need {width}")
    rope = getattr(model, "rope", None)
    dims = getattr(rope, "dims", None)
    if isinstance(dims, int) and (not 0 < dims <= head_dim or dims % 2):
        raise ModelError(f"key '{arch}.rope.dimension_count' is {dims}: it must be even, positive and at most "
                         f"the head size {head_dim}")
