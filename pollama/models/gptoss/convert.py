"""HF GptOssForCausalLM (gpt-oss-20b, gpt-oss-120b) -> GGUF "gpt-oss", as llama.cpp writes it.

The released checkpoints keep their experts in MXFP4 (`*_blocks` uint8 [experts, rows, blocks,
16] and `*_scales` uint8 e8m0 [experts, rows, blocks]); GGML's MXFP4 is the same numbers (one
e8m0 scale and 32 e2m1 codes a block), so they are written without being dequantized: only the
order of the codes inside a block's 16 bytes differs (pollama/fs/mxfp4.py). A checkpoint with
float experts (saved by transformers after dequantizing) converts too, to F16/F32.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from pollama.fs import mxfp4
from pollama.models.convert import ATTENTION_LAYER_NAMES, ConvertError, ModelConverter, rope_scaling_metadata

LAYER_NAMES = {
    **ATTENTION_LAYER_NAMES,
    "self_attn.sinks": "attn_sinks",
    "post_attention_layernorm": "post_attention_norm",
    "mlp.router": "ffn_gate_inp",
    "mlp.experts.gate_proj": "ffn_gate_exps",
    "mlp.experts.up_proj": "ffn_up_exps",
    "mlp.experts.down_proj": "ffn_down_exps",
}

class _Packed:
    """Rows of one MXFP4 expert tensor of the checkpoint, as GGML bytes (dtype "MXFP4").

    `shape` is the tensor's PyTorch-order shape in values, [experts, rows, in]; numpy() gives its
    bytes in GGML's MXFP4 layout, which the converter writes as they are.
    """

    dtype = "MXFP4"

    def __init__(self, blocks, scales, rows: slice):
        self.blocks, self.scales, self.rows = blocks, scales, rows
        e, r, n, _ = blocks.shape
        self.shape = (e, len(range(*rows.indices(r))), n * mxfp4.BLOCK)

    def numpy(self) -> np.ndarray:
        return mxfp4.from_checkpoint(self.blocks.numpy()[:, self.rows], self.scales.numpy()[:, self.rows])


class _Float:
    """A float tensor of the checkpoint, changed by `change` (a slice, a transpose) when read."""

    def __init__(self, tensor, change, shape: tuple[int, ...]):
        self.tensor, self.change, self.shape = tensor, change, shape

    def numpy(self) -> np.ndarray:
        return np.ascontiguousarray(self.change(self.tensor.numpy()))


class GptOssWeights(Mapping):
    """The checkpoint's tensors as GGUF keeps them: the fused gate_up experts (and their bias)
    split into gate and up (alternate rows of the checkpoint), experts as [experts, out, in]
    (MXFP4 ones as GGML bytes), and each `self_attn.sinks` named `.weight`."""

    def __init__(self, weights):
        self.weights = weights
        self.parts: dict[str, tuple[tuple[str, ...], Any]] = {}  # name -> (sources, how to make it)
        self.unwritten: dict[str, set[str]] = {}  # source -> its parts not yet released
        for name in weights:
            m = re.fullmatch(r"(.+\.mlp\.experts)\.(gate_up_proj|down_proj)(_blocks|_scales|_bias|)", name)
            if name.endswith("self_attn.sinks"):
                self._add(f"{name}.weight", (name,), None)
            elif m is None:
                self._add(name, (name,), None)
            else:
                self._add_experts(m.group(1), m.group(2), m.group(3))

    def _add_experts(self, stem: str, proj: str, kind: str) -> None:
        w = self.weights
        fused = proj == "gate_up_proj"
        outputs = (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))) if fused else (("down_proj", slice(None)),)
        if kind == "_scales":
            return  # made with its blocks
        if kind == "_blocks":
            blocks, scales = f"{stem}.{proj}_blocks", f"{stem}.{proj}_scales"
            if scales not in w:
                raise ConvertError(f"tensor {blocks!r} has no {scales!r} beside it")
            b, s = w[blocks], w[scales]
            if len(b.shape) != 4 or b.shape[-1] != 16 or tuple(b.shape[:-1]) != tuple(s.shape):
                raise ConvertError(f"MXFP4 tensors {blocks!r} {list(b.shape)} and {scales!r} {list(s.shape)} do not match")
            for out, rows in outputs:
                self._add(f"{stem}.{out}.weight", (blocks, scales), lambda rows=rows: _Packed(w[blocks], w[scales], rows))
            return
        source = f"{stem}.{proj}{kind}"
        shape = tuple(w[source].shape)
        for out, rows in outputs:
            if kind == "_bias":  # [experts, out]
                n = len(range(*rows.indices(shape[1])))
                self._add(f"{stem}.{out}.bias", (source,),
                          lambda rows=rows, n=n: _Float(w[source], lambda a: a[:, rows], (shape[0], n)))
            else:  # float experts, as transformers holds them: [experts, in, out] -> [experts, out, in]
                n = len(range(*rows.indices(shape[2])))
                self._add(f"{stem}.{out}.weight", (source,),
                          lambda rows=rows, n=n: _Float(w[source], lambda a: a[:, :, rows].transpose(0, 2, 1),
                                                        (shape[0], n, shape[1])))

    def _add(self, name: str, sources: tuple[str, ...], make) -> None:
        self.parts[name] = (sources, make)
        for source in sources:
            self.unwritten.setdefault(source, set()).add(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, name: str):
        sources, make = self.parts[name]
        return self.weights[sources[0]] if make is None else make()

    def dtype(self, name: str) -> str:
        sources, make = self.parts[name]
        if make is not None and self.weights.dtype(sources[0]) == "U8":
            return "MXFP4"
        return self.weights.dtype(sources[0])

    def release(self, name: str) -> None:
        # A checkpoint tensor's pages are dropped once the last tensor made from it is written.
        for source in self.parts[name][0]:
            self.unwritten[source].discard(name)
            if not self.unwritten[source]:
                self.weights.release(source)


class GptOssConverter(ModelConverter):
    arch = "gpt-oss"
    architectures = ("GptOssForCausalLM",)
    layer_names = LAYER_NAMES

    def source(self, weights: Mapping[str, Any]) -> Mapping[str, Any]:
        return GptOssWeights(weights)

    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        n_layers = c.require("num_hidden_layers")
        # The model computes its own gate (swiglu_oai, alpha 1.702, limit 7.0): GGUF has no key for either.
        if (c.get("swiglu_alpha", 1.702), c.get("swiglu_limit", 7.0)) != (1.702, 7.0):
            raise ConvertError(f"config.json swiglu_alpha={c.get('swiglu_alpha')} swiglu_limit={c.get('swiglu_limit')}: "
                               "GGUF readers compute gpt-oss's gate with 1.702 and 7.0")
        layer_types = c.get("layer_types") or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers:
            raise ConvertError(f"config.json layer_types has {len(layer_types)} entries for {n_layers} layers")
        rope = c.rope(default_theta=150000.0)
        md = self.decoder_metadata(default_eps=1e-5, default_ctx=131072)
        md.update({
            "attention.key_length": self.head_dim(),
            "attention.value_length": self.head_dim(),
            "expert_count": c.require("num_local_experts"),
            "expert_used_count": c.require("num_experts_per_tok"),
            "expert_feed_forward_length": c.require("intermediate_size"),
            "attention.sliding_window": c.get("sliding_window", 128),
            "attention.sliding_window_pattern": [t == "sliding_attention" for t in layer_types],
            "rope.freq_base": float(rope["rope_theta"]),
            **rope_scaling_metadata(rope),
        })
        return md


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (GptOssConverter,)
