"""What every converter shares: Hugging Face checkpoint folder (config.json, safetensors,
tokenizer) -> one GGUF file, given the architecture's converter.

Each architecture's converter (a ModelConverter in models/<name>/convert.py) says how its
names, keys and values map; `convert_folder(folder, out, converter)` writes the GGUF with the
metadata keys and tensor names llama.cpp's converter writes, so the file runs here, in
llama.cpp and in Ollama alike (`create` picks the converter by config.json's
`architectures[0]`: pollama/create/convert.py). Weights keep their values: 1-D tensors are
stored F32, matrices F16 (or F32 when asked), and the architecture's converter applies what its
GGUF layout needs (Llama's Q/K row order, Gemma's norm offset). A converter with `whole` (BERT's)
writes the file itself.

Weights come from safetensors or PyTorch checkpoints, found in Ollama's order (checkpoint.py),
and are converted one tensor at a time as the GGUF is written: a model of any size needs
memory for about one tensor, whatever its file size.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from pollama.fs.ggml_types import FileType, GGMLType
from pollama.fs.gguf import GGUFValueType
from pollama.fs.writer import LazyTensor, write_gguf
from pollama.models.checkpoint import ConvertError, open_weights, read_hf_config
from pollama.tokenizer.convert import TokenizerConvertError, convert_tokenizer

log = logging.getLogger(__name__)

__all__ = ["ConvertError", "HFConfig", "ModelConverter", "convert_folder"]

OUT_TYPES = {"f32": (GGMLType.F32, FileType.ALL_F32), "f16": (GGMLType.F16, FileType.MOSTLY_F16)}
# Tensors a converter's source() hands over already in a GGML block type (dtype name -> type):
# their bytes are written as they are, never dequantized and requantized (gpt-oss's MXFP4 experts).
# A file holding them gets llama.cpp's file type for it (MOSTLY_MXFP4_MOE: its float tensors
# stay as asked), which `create --quantize` refuses as Ollama refuses its gpt-oss files.
PACKED_TYPES = {"MXFP4": GGMLType.MXFP4}
PACKED_FILE_TYPES = {GGMLType.MXFP4: FileType.MXFP4_MOE}
_F16_MAX = float(np.finfo(np.float16).max)


class HFConfig:
    """config.json of a checkpoint: values by HF name, with defaults and clear errors for missing ones."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def get(self, key: str, default: Any = None) -> Any:
        """config[key], or default when absent or null."""
        value = self.data.get(key)
        return default if value is None else value

    def require(self, key: str) -> Any:
        """config[key]; ConvertError when config.json lacks it."""
        value = self.data.get(key)
        if value is None:
            raise ConvertError(f"config.json lacks {key!r}")
        return value

    def rope(self, layer_type: str | None = None, default_theta: float = 10000.0) -> dict[str, Any]:
        """RoPE parameters as transformers 5 writes them: {"rope_type", "rope_theta", factor, ...}.

        Older configs (rope_theta + rope_scaling) are read into the same form; `layer_type`
        picks one entry of a per-layer-type dict (Gemma 3: sliding_attention, full_attention).
        """
        params = self.data.get("rope_parameters")
        if isinstance(params, dict) and layer_type is not None and isinstance(params.get(layer_type), dict):
            params = params[layer_type]
        if not isinstance(params, dict) or "rope_theta" not in params:
            params = {"rope_theta": self.get("rope_theta", default_theta), **(self.get("rope_scaling") or {})}
        return {**params, "rope_type": params.get("rope_type") or params.get("type") or "default"}


# The attention half of a decoder layer as HF's Llama names it, which most architectures
# (text and vision) keep: HF name inside the layer (without .weight/.bias) -> GGUF name.
ATTENTION_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
}


class ModelConverter:
    """One architecture's HF -> GGUF mapping; models/<name>/convert.py subclasses it."""

    arch: str  # general.architecture
    architectures: tuple[str, ...]  # the config.json architectures it converts
    # GGUF name of each HF tensor outside the layers, and of each per-layer tensor of
    # `model.layers.N.` (without .weight/.bias), which becomes `blk.N.`.
    top_names: ClassVar[dict[str, str]] = {
        "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer_names: ClassVar[dict[str, str]] = {}

    folder: Path | None = None  # the checkpoint folder, for converters that read more than config.json
    # Whether a SentencePiece-style tokenizer.json (byte fallback, "\u2581" spaces) is written as
    # llama.cpp's "gemma4" vocabulary rather than refused (pollama.tokenizer.convert).
    sentencepiece_bpe: ClassVar[bool] = False
    # A converter of its own (its own vocabulary kind and keys: BERT's), called as
    # whole(folder, out_path, outtype=...) instead of the mapping below.
    whole: ClassVar[Callable[..., None] | None] = None

    def __init__(self, cfg: HFConfig):
        self.cfg = cfg

    def metadata(self) -> dict[str, Any]:
        """`<arch>.*` keys, without the arch prefix."""
        raise NotImplementedError

    def transform(self, name: str, data: np.ndarray) -> np.ndarray:
        """Change a tensor for its GGUF layout (keeping its shape); `name` is its GGUF name, data float32."""
        return data

    def tokenizer_metadata(self, md: dict[str, Any]) -> dict[str, Any]:
        """The tokenizer.* keys as this architecture's GGUF has them (as converted, unless told)."""
        return md

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors GGUF has and the checkpoint has not (computed from config.json)."""
        return []

    def source(self, weights: Mapping[str, Any]) -> Mapping[str, Any]:
        """The checkpoint's tensors as this architecture maps them (identity; a converter whose
        checkpoint fuses tensors GGUF keeps apart gives a view with the parts instead)."""
        return weights

    def skip(self, hf_name: str) -> bool:
        """HF tensors GGUF does not keep: RoPE caches, and lm_head when tied to the embedding."""
        if hf_name.endswith("rotary_emb.inv_freq"):
            return True
        return hf_name == "lm_head.weight" and bool(self.cfg.get("tie_word_embeddings", False))

    def gguf_names(self, hf_name: str) -> list[str]:
        """Every GGUF tensor made from one HF tensor (usually one; `transform` tells them apart)."""
        return [self.gguf_name(hf_name)]

    def gguf_name(self, hf_name: str) -> str:
        """The GGUF name of an HF tensor; ConvertError for one this architecture does not have."""
        stem, dot, suffix = hf_name.rpartition(".")
        if dot and suffix in ("weight", "bias"):
            if stem in self.top_names:
                return f"{self.top_names[stem]}.{suffix}"
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
            if m and m.group(2) in self.layer_names:
                return f"blk.{m.group(1)}.{self.layer_names[m.group(2)]}.{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no place in a {self.arch} GGUF")

    # -- helpers for subclasses -------------------------------------------------------------------
    def decoder_metadata(self, default_eps: float = 1e-6, default_ctx: int = 2048) -> dict[str, Any]:
        """The keys every decoder has: sizes, heads, norm epsilon, context length."""
        c = self.cfg
        heads = c.require("num_attention_heads")
        md = {
            "vocab_size": c.require("vocab_size"),
            "context_length": c.get("max_position_embeddings", default_ctx),
            "embedding_length": c.require("hidden_size"),
            "feed_forward_length": c.require("intermediate_size"),
            "block_count": c.require("num_hidden_layers"),
            "attention.head_count": heads,
            "attention.head_count_kv": c.get("num_key_value_heads", heads),
            "attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", default_eps)),
        }
        if c.get("head_dim") is not None:  # llama.cpp writes these when the config names a head size
            md["attention.key_length"] = md["attention.value_length"] = c.get("head_dim")
        return md

    def head_dim(self) -> int:
        """Size of one attention head (config's head_dim, else hidden_size / heads)."""
        c = self.cfg
        return c.get("head_dim") or c.require("hidden_size") // c.require("num_attention_heads")

    def check_activation(self, key: str, allowed: tuple[str, ...], default: str) -> None:
        """ConvertError unless the config's activation is the one the GGUF model computes."""
        act = self.cfg.get(key, default)
        if act not in allowed:
            raise ConvertError(f"config.json {key}={act!r}: {self.arch} models compute {allowed[0]}")


def rope_scaling_metadata(rope: dict[str, Any]) -> dict[str, Any]:
    """`rope.scaling.*` keys for linear and YaRN context extension; ConvertError for other kinds."""
    kind = rope["rope_type"]
    if kind == "default":
        return {}
    factor = float(rope.get("factor", 1.0))
    if kind == "linear":
        return {"rope.scaling.type": "linear", "rope.scaling.factor": factor}
    if kind == "yarn":
        md = {"rope.scaling.type": "yarn", "rope.scaling.factor": factor}
        if rope.get("original_max_position_embeddings"):
            md["rope.scaling.original_context_length"] = int(rope["original_max_position_embeddings"])
        for hf, key in (("beta_fast", "rope.scaling.yarn_beta_fast"), ("beta_slow", "rope.scaling.yarn_beta_slow")):
            if rope.get(hf) is not None:
                md[key] = float(rope[hf])
        return md
    raise ConvertError(f"config.json rope scaling {kind!r} is not supported (linear, yarn)")


def convert_folder(
    folder: str | Path,
    out_path: str | Path,
    converter: type[ModelConverter],
    progress: Callable[[str], None] | None = None,
    *,
    outtype: str = "f16",
) -> None:
    """Convert a HF checkpoint folder to a GGUF file with this converter; ConvertError (one line)
    for what cannot be (a folder whose config.json names a class the converter does not take)."""
    folder = Path(folder)
    say = progress or (lambda status: None)
    if outtype not in OUT_TYPES:
        raise ConvertError(f"output type {outtype!r} is not one of {', '.join(OUT_TYPES)}")
    config, arch = read_hf_config(folder)
    if arch not in converter.architectures:
        raise ConvertError(f"{folder / 'config.json'}: architectures names {arch!r}, not {list(converter.architectures)}")
    if converter.whole is not None:
        say(f"converting {arch}")
        try:
            return converter.whole(folder, out_path, outtype=outtype)
        except ValueError as e:
            raise ConvertError(str(e)) from None
    conv = converter(HFConfig(config))
    conv.folder = folder
    model_md = conv.metadata()  # refuses a bad config before anything is read

    say("reading tokenizer")
    try:
        tokenizer_md = conv.tokenizer_metadata(
            convert_tokenizer(folder, conv.cfg.require("vocab_size"), config, sentencepiece_bpe=conv.sentencepiece_bpe))
    except TokenizerConvertError as e:
        raise ConvertError(str(e)) from None

    say("reading weights")
    with open_weights(folder) as weights:
        tensor_type, file_type = OUT_TYPES[outtype]
        tensors = _convert_tensors(conv, conv.source(weights), tensor_type, say)
        file_type = next((PACKED_FILE_TYPES[t] for _, _, t, _ in tensors if t in PACKED_FILE_TYPES), file_type)
        metadata: dict[str, Any] = {
            "general.architecture": conv.arch,
            "general.name": folder.name,
            "general.file_type": int(file_type),
            "general.quantization_version": 2,
            "general.parameter_count": sum(math.prod(shape) for _, _, _, shape in tensors),
        }
        metadata.update({f"{conv.arch}.{k}": v for k, v in model_md.items()})
        metadata.update(tokenizer_md)
        say(f"writing {out_path}")
        write_gguf(out_path, metadata, tensors, value_types=_value_types(metadata))


def _convert_tensors(conv: ModelConverter, weights, tensor_type: GGMLType, say: Callable[[str], None]):
    """(GGUF name, LazyTensor, type, shape) of every tensor, renamed and changed as the architecture needs.

    Nothing is read here: each tensor is read, changed and converted when the writer reaches
    it, and its source pages are dropped once it is written.
    """
    # Everything that can be refused without reading data is refused before the file is begun.
    names = [n for n in weights if not conv.skip(n)]
    for name in names:
        dtype = weights.dtype(name)
        if dtype not in ("F32", "F16", "BF16") and dtype not in PACKED_TYPES:
            raise ConvertError(f"tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 weights are supported")
    sources = [(gguf_name, n) for n in names for gguf_name in conv.gguf_names(n)]
    computed = conv.extra_tensors()
    seen: dict[str, str] = {}
    for gguf_name, origin in [*sources, *((name, "(computed)") for name, _ in computed)]:
        if gguf_name in seen:
            raise ConvertError(f"duplicate tensor name {gguf_name!r} (from {seen[gguf_name]!r} and {origin!r})")
        seen[gguf_name] = origin

    out = []
    uses = collections.Counter(hf_name for _, hf_name in sources)

    def release(hf_name: str) -> None:  # once every tensor made from it is written
        uses[hf_name] -= 1
        if uses[hf_name] == 0:
            weights.release(hf_name)

    for gguf_name, hf_name in sources:
        shape = tuple(weights[hf_name].shape)
        read = (lambda n=hf_name: weights[n].numpy())
        done = (lambda n=hf_name: release(n))
        packed = PACKED_TYPES.get(weights.dtype(hf_name))
        if packed is not None:
            out.append((gguf_name, LazyTensor(read, done), packed, shape))
        else:
            out.append(_planned(conv, gguf_name, hf_name, shape, tensor_type, read, done))
    for gguf_name, data in computed:
        data = np.asarray(data)
        out.append(_planned(conv, gguf_name, "(computed)", data.shape, tensor_type, lambda d=data: d, None))
    say(f"converting {len(out)} tensors")
    # A fixed order (embedding, layers by number, the rest), whatever the shards' order was.
    return sorted(out, key=_tensor_order)


_F32_MATRICES = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def _planned(conv: ModelConverter, gguf_name: str, origin: str, shape: tuple[int, ...], tensor_type: GGMLType,
             read: Callable[[], np.ndarray], done: Callable[[], None] | None) -> tuple:
    # Norms, biases and other vectors stay F32: they are small and precision matters there; so
    # do MoE routers, as llama.cpp's converter keeps them (F16 scores could pick other experts).
    half = tensor_type == GGMLType.F16 and len(shape) >= 2 and not gguf_name.endswith(_F32_MATRICES)
    gtype = GGMLType.F16 if half else GGMLType.F32

    def load() -> np.ndarray:
        data = conv.transform(gguf_name, np.asarray(read(), dtype=np.float32))
        if data.shape != shape:
            raise ConvertError(f"tensor {origin!r}: {conv.arch} conversion changed its shape {list(shape)}")
        if gtype == GGMLType.F16:
            if max(data.max(initial=0.0), -data.min(initial=0.0)) > _F16_MAX:
                raise ConvertError(f"tensor {origin!r} has values beyond F16's range; convert to f32")
            raw = data.astype("<f2")
        else:
            raw = np.ascontiguousarray(data, dtype="<f4")
        # As raw bytes in the target type: an unchanged F32 tensor stays a view of the mapped file.
        return raw.reshape(-1).view(np.uint8)

    return gguf_name, LazyTensor(load, done), gtype, shape


def _tensor_order(tensor: tuple) -> tuple:
    name = tensor[0]
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1 if name.startswith("token_embd") else math.inf, name)


def _value_types(metadata: dict[str, Any]) -> dict[str, GGUFValueType]:
    # llama.cpp stores counts and token ids as uint32 (the writer would infer int32).
    types = {k: GGUFValueType.UINT32 for k, v in metadata.items() if type(v) is int}
    types["general.parameter_count"] = GGUFValueType.UINT64
    return types
