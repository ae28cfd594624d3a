"""HF Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration -> GGUF "qwen2vl" / "qwen25vl".

One file holds the Qwen2 text decoder (its tensors as "qwen2" has them, with M-RoPE keys) and
the vision tower with its patch merger (`v.*`), named and keyed as Ollama's
convert_qwen25vl.go writes them, so a qwen25vl file runs in Ollama too: the 3-D patch
convolution is split into one 2-D kernel per temporal frame (`v.patch_embd_0/1`) and the fused
attention projection `qkv` into `attn_q/k/v`. Qwen2-VL (which Ollama does not convert) gets
the same layout under "qwen2vl"; its tower differs in LayerNorm and a fc1/fc2 quick-GELU MLP.

Two HF tensors become several GGUF ones: the converter's `source()` is `SplitWeights`, a view
of the checkpoint in which each fused tensor appears as its parts (each still read lazily, one
at a time), which models/convert.py's one-to-one pipeline then maps like any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from pollama.models.convert import ConvertError, HFConfig, ModelConverter
from pollama.models.llama.convert import LAYER_NAMES as TEXT_LAYER_NAMES

# HF name inside `visual.blocks.N.` -> GGUF name inside `v.blk.N.` (after the splits below).
VISION_LAYER_NAMES = {
    "norm1": "ln1",
    "norm2": "ln2",
    "attn.q": "attn_q",
    "attn.k": "attn_k",
    "attn.v": "attn_v",
    "attn.proj": "attn_out",
    # Qwen2.5-VL: SwiGLU
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    # Qwen2-VL: fc1 -> quick_gelu -> fc2
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}
VISION_TOP_NAMES = {
    "merger.ln_q": "v.merger.ln_q",
    "merger.mlp.0": "v.merger.mlp.0",
    "merger.mlp.2": "v.merger.mlp.2",
    "patch_embed.proj_0": "v.patch_embd_0",
    "patch_embed.proj_1": "v.patch_embd_1",
}


def _hf_stem(name: str) -> str:
    """The checkpoint name without transformers 5's in-memory prefixes (model.language_model.*,
    model.visual.*), which a folder saved by save_pretrained does not have but others may."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    return name


class SplitWeights(Mapping):
    """A checkpoint's tensors with each fused one replaced by its parts: `attn.qkv` by `attn.q`,
    `attn.k`, `attn.v` (thirds of the rows), `patch_embed.proj` [out, C, T, P, P] by
    `patch_embed.proj_<t>` [out, C, P, P] (one per frame)."""

    def __init__(self, weights):
        self.weights = weights
        self.parts: dict[str, tuple[str, Any]] = {}  # part name -> (source, index into the source)
        self.unwritten: dict[str, set[str]] = {}  # source -> its parts not yet released
        self.names: list[str] = []
        for name in weights:
            shape = tuple(weights[name].shape)
            if re.search(r"\.attn\.qkv\.(weight|bias)$", name):
                if shape[0] % 3:
                    raise ConvertError(f"tensor {name!r}: {shape[0]} rows are not three equal parts")
                n = shape[0] // 3
                for i, part in enumerate("qkv"):
                    self._add(name.replace(".attn.qkv.", f".attn.{part}."), name, slice(i * n, (i + 1) * n))
            elif name.endswith("patch_embed.proj.weight"):
                if len(shape) != 5:
                    raise ConvertError(f"tensor {name!r} of shape {list(shape)} is not a 3-D convolution kernel")
                for t in range(shape[2]):
                    self._add(name.replace("proj.weight", f"proj_{t}.weight"), name, (slice(None), slice(None), t))
            else:
                self.names.append(name)

    def _add(self, part: str, source: str, index) -> None:
        self.parts[part] = (source, index)
        self.unwritten.setdefault(source, set()).add(part)
        self.names.append(part)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str):
        if name not in self.parts:
            return self.weights[name]
        source, index = self.parts[name]
        return _Part(self.weights[source], index)

    def dtype(self, name: str) -> str:
        return self.weights.dtype(self.parts[name][0] if name in self.parts else name)

    def release(self, name: str) -> None:
        # A fused tensor's pages are dropped once its last part is written.
        if name in self.parts:
            source = self.parts[name][0]
            self.unwritten[source].discard(name)
            if self.unwritten[source]:
                return
            name = source
        self.weights.release(name)


class _Part:
    def __init__(self, tensor, index):
        self.tensor = tensor
        self.index = index
        self.shape = np.empty(tuple(tensor.shape), dtype=np.uint8)[index].shape

    def numpy(self) -> np.ndarray:
        return np.ascontiguousarray(self.tensor.numpy()[self.index])


class Qwen2VLConverter(ModelConverter):
    arch = "qwen2vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    layer_names = TEXT_LAYER_NAMES

    def __init__(self, cfg: HFConfig):
        text = cfg.get("text_config") or {}
        vision = cfg.get("vision_config") or {}
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise ConvertError("config.json text_config and vision_config must be objects")
        # Hub configs are flat (text keys at the top); transformers 5 nests them in text_config.
        top = {k: v for k, v in cfg.data.items() if k not in ("text_config", "vision_config")}
        super().__init__(HFConfig({**top, **text}))
        self.vision = HFConfig(vision)

    def source(self, weights: Mapping[str, Any]) -> Mapping[str, Any]:
        """The fused qkv and 3-D patch kernel as their parts (see SplitWeights)."""
        return SplitWeights(weights)

    def metadata(self) -> dict[str, Any]:
        c, v = self.cfg, self.vision
        self.check_activation("hidden_act", ("silu",), "silu")
        rope = c.rope(default_theta=1000000.0)
        if rope["rope_type"] not in ("default", "mrope"):
            raise ConvertError(f"config.json rope type {rope['rope_type']!r} is not supported (M-RoPE only)")
        sections = rope.get("mrope_section") or c.get("mrope_section")
        head_dim = self.head_dim()
        if not sections or sum(sections) != head_dim // 2:
            raise ConvertError(
                f"config.json mrope_section {sections} must split the {head_dim // 2} rotary frequencies")
        md = self.decoder_metadata(default_eps=1e-6, default_ctx=32768, rope=rope, rope_scaling=False)
        md["rope.dimension_count"] = head_dim
        md["rope.mrope_section"] = [int(s) for s in sections]

        patch, merge = v.get("patch_size", 14), v.get("spatial_merge_size", 2)
        vision_theta = (v.get("rope_parameters") or {}).get("rope_theta", v.get("rope_theta", 10000.0))
        md.update({
            "vision.block_count": v.get("depth", 32),
            "vision.embedding_length": self.vision_width(),
            "vision.attention.head_count": v.get("num_heads", 16),
            "vision.num_channels": v.get("in_channels", v.get("in_chans", 3)),
            "vision.patch_size": patch,
            "vision.spatial_merge_size": merge,
            "vision.spatial_patch_size": v.get("spatial_patch_size", patch),
            "vision.temporal_patch_size": v.get("temporal_patch_size", 2),
            "vision.attention.layer_norm_epsilon": 1e-6,  # transformers builds the tower's norms so
            "vision.rope.freq_base": float(vision_theta),
        })
        md.update(self.pixel_limits())
        act = v.get("hidden_act", self.vision_act)
        if act != self.vision_act:
            raise ConvertError(f"config.json vision_config.hidden_act={act!r}: {self.arch} computes {self.vision_act}")
        if self.vision_width() % md["vision.attention.head_count"]:
            raise ConvertError("config.json vision width is not a multiple of num_heads")
        return md

    vision_act = "quick_gelu"

    def pixel_limits(self) -> dict[str, int]:
        """vision.min_pixels / max_pixels from the image processor's preprocessor_config.json:
        the image areas the model was trained within (smart resize keeps to them)."""
        path = self.folder / "preprocessor_config.json" if self.folder is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            pre = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConvertError(f"{path}: not readable JSON ({e})") from None
        size = pre.get("size") if isinstance(pre.get("size"), dict) else {}
        limits = {"vision.min_pixels": pre.get("min_pixels", size.get("shortest_edge")),
                  "vision.max_pixels": pre.get("max_pixels", size.get("longest_edge"))}
        out = {}
        for key, value in limits.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConvertError(f"{path}: {key.split('.')[-1]} must be a positive integer, got {value!r}")
            out[key] = value
        if len(out) == 2 and out["vision.min_pixels"] > out["vision.max_pixels"]:
            raise ConvertError(f"{path}: min_pixels {out['vision.min_pixels']} is above max_pixels {out['vision.max_pixels']}")
        return out

    def vision_width(self) -> int:
        return self.vision.get("embed_dim", 1280)

    def skip(self, hf_name: str) -> bool:
        return super().skip(_hf_stem(hf_name))

    def gguf_name(self, hf_name: str) -> str:
        name = _hf_stem(hf_name)
        if not name.startswith("visual."):
            return super().gguf_name(name)
        stem, _, suffix = name.removeprefix("visual.").rpartition(".")
        if suffix in ("weight", "bias"):
            if stem in VISION_TOP_NAMES:
                return f"{VISION_TOP_NAMES[stem]}.{suffix}"
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", stem)
            if m and m.group(2) in VISION_LAYER_NAMES:
                return f"v.blk.{m.group(1)}.{VISION_LAYER_NAMES[m.group(2)]}.{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no place in a {self.arch} GGUF")


class Qwen25VLConverter(Qwen2VLConverter):
    arch = "qwen25vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    vision_act = "silu"

    def vision_width(self) -> int:
        return self.vision.get("hidden_size", 1280)

    def metadata(self) -> dict[str, Any]:
        md = super().metadata()
        v = self.vision
        window = v.get("window_size", 112)
        unit = md["vision.patch_size"] * md["vision.spatial_merge_size"]
        if window % unit:
            raise ConvertError(f"config.json window_size={window} is not a multiple of patch_size * spatial_merge_size")
        md["vision.window_size"] = window
        md["vision.fullatt_block_indexes"] = [int(i) for i in v.get("fullatt_block_indexes", [7, 15, 23, 31])]
        return md


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Qwen2VLConverter, Qwen25VLConverter)
