"""HF Gemma4ForCausalLM (text) and the text part of Gemma4ForConditionalGeneration -> GGUF "gemma4",
with llama.cpp's keys and tensor names (its conversion/gemma.py Gemma4Model).

The vision and audio towers of the multimodal checkpoints are left out: pollama runs Gemma 4's
text model only (llama.cpp too keeps them in a separate mmproj file). Mixture-of-experts
checkpoints (26B-A4B) are refused: pollama has no expert routing.
"""

from __future__ import annotations

import re

import numpy as np

from pollama.models.convert import ConvertError, HFConfig, ModelConverter
from pollama.models.gemma3.convert import LAYER_NAMES as GEMMA3_LAYER_NAMES

LAYER_NAMES = {
    **GEMMA3_LAYER_NAMES,
    "per_layer_input_gate": "inp_gate",
    "per_layer_projection": "proj",
    "post_per_layer_input_norm": "post_norm",
}
TOP_NAMES = {
    **ModelConverter.top_names,
    "model.embed_tokens_per_layer": "per_layer_token_embd",
    "model.per_layer_model_projection": "per_layer_model_proj",
    "model.per_layer_projection_norm": "per_layer_proj_norm",
}
SLIDING, FULL = "sliding_attention", "full_attention"
# Tokens llama.cpp's converter makes user-defined, so that they show in output (the chat
# parsers read thinking and tool calls from them).
VISIBLE_TOKENS = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
                  '<|"|>'}


class Gemma4Converter(ModelConverter):
    arch = "gemma4"
    architectures = ("Gemma4ForCausalLM",)
    layer_names = LAYER_NAMES
    top_names = TOP_NAMES
    sentencepiece_bpe = True  # Gemma 4's tokenizer.json: written as llama.cpp's "gemma4" vocabulary

    def layer_shapes(self) -> tuple[list[str], list[int], list[int]]:
        """(layer types, head size, K/V heads) of every layer, as transformers resolves them:
        per_layer_config when the config has one, else global_head_dim and (with attention_k_eq_v)
        num_global_key_value_heads for the global layers."""
        c = self.cfg
        n = c.require("num_hidden_layers")
        types = c.get("layer_types") or [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n)]
        if len(types) != n:
            raise ConvertError(f"config.json layer_types has {len(types)} entries for {n} layers")
        types = list(types[:-1]) + [FULL]  # transformers forces the last layer global
        head_dim, kv_heads = c.get("head_dim", 256), c.get("num_key_value_heads", 4)
        per_layer = c.get("per_layer_config")
        if isinstance(per_layer, dict):
            overrides = [per_layer.get(str(i)) or per_layer.get(i) or {} for i in range(n)]
        else:
            full = {"head_dim": c.get("global_head_dim", 512)}
            if c.get("attention_k_eq_v", False) and c.get("num_global_key_value_heads") is not None:
                full["num_key_value_heads"] = c.get("num_global_key_value_heads")
            overrides = [full if t == FULL else {} for t in types]
        dims = [o.get("head_dim", head_dim) for o in overrides]
        kvs = [o.get("num_key_value_heads", kv_heads) for o in overrides]
        for kind in (SLIDING, FULL):
            shapes = {(dims[i], kvs[i]) for i in range(n) if types[i] == kind}
            if len(shapes) > 1:
                raise ConvertError(f"config.json: {kind} layers differ in head_dim/num_key_value_heads "
                                   f"{sorted(shapes)}; GGUF keeps one of each for sliding and for global layers")
        return types, dims, kvs

    def metadata(self) -> dict:
        c = self.cfg
        self.check_activation("hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
        if c.get("enable_moe_block", False):
            raise ConvertError("config.json enable_moe_block: Gemma 4's mixture-of-experts layers are not supported")
        if c.get("attention_bias", False):
            raise ConvertError("config.json attention_bias is set; Gemma 4 has no attention biases")
        if c.get("use_bidirectional_attention") == "all":
            raise ConvertError("config.json use_bidirectional_attention='all' (an encoder) is not supported")
        n = c.require("num_hidden_layers")
        types, dims, kvs = self.layer_shapes()
        local = [t == SLIDING for t in types]
        full_dim = next(dims[i] for i in range(n) if not local[i])
        swa_dim = next((dims[i] for i in range(n) if local[i]), full_dim)

        global_rope, local_rope = c.rope(FULL, default_theta=1_000_000.0), c.rope(SLIDING)
        if global_rope["rope_type"] not in ("proportional", "default") or float(global_rope.get("factor", 1.0)) != 1.0:
            raise ConvertError(f"config.json full_attention RoPE {global_rope}: Gemma 4 GGUF keeps proportional "
                               "RoPE without scaling")
        if local_rope["rope_type"] != "default" or float(local_rope.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ConvertError(f"config.json sliding_attention RoPE {local_rope}: Gemma 4 GGUF keeps plain RoPE there")

        shared = c.get("num_kv_shared_layers", 0)
        if shared and not (0 < shared <= n - 2 and not local[n - shared - 1] and local[n - shared - 2]):
            # transformers lets each sharing layer read the last earlier layer of its kind;
            # llama.cpp (and so every GGUF reader) takes those to be the last two before them.
            raise ConvertError(f"config.json num_kv_shared_layers={shared}: GGUF needs the two layers before the "
                               "sharing ones to be a sliding and then a global one")
        n_ff = c.require("intermediate_size")
        # Double-wide MLPs are in the KV-sharing layers only.
        ffn = [n_ff * 2 if c.get("use_double_wide_mlp", False) and i >= n - shared else n_ff for i in range(n)]
        md = {
            "vocab_size": c.require("vocab_size"),
            "context_length": c.get("max_position_embeddings", 131072),
            "embedding_length": c.require("hidden_size"),
            "block_count": n,
            "feed_forward_length": ffn if len(set(ffn)) > 1 else n_ff,
            "attention.head_count": c.get("num_attention_heads", 8),
            "attention.head_count_kv": kvs if len(set(kvs)) > 1 else kvs[0],
            "attention.key_length": full_dim,
            "attention.value_length": full_dim,
            "attention.key_length_swa": swa_dim,
            "attention.value_length_swa": swa_dim,
            "attention.layer_norm_rms_epsilon": float(c.get("rms_norm_eps", 1e-6)),
            "attention.sliding_window": c.get("sliding_window", 512),
            "attention.sliding_window_pattern": local,
            "attention.shared_kv_layers": shared,
            "embedding_length_per_layer_input": c.get("hidden_size_per_layer_input") or 0,
            "rope.freq_base": float(global_rope["rope_theta"]),
            "rope.freq_base_swa": float(local_rope["rope_theta"]),
            # Global layers rotate their whole head, the frequencies past the proportion held
            # still by rope_freqs (extra_tensors).
            "rope.dimension_count": full_dim,
            "rope.dimension_count_swa": swa_dim,
        }
        if c.get("final_logit_softcapping"):
            md["final_logit_softcapping"] = float(c.get("final_logit_softcapping"))
        return md

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        # Proportional RoPE turns the first partial_rotary_factor of the frequencies and leaves the
        # rest still; ggml's NEOX RoPE divides each frequency by its factor, so 1e30 stops it.
        types, dims, _ = self.layer_shapes()
        full_dim = dims[types.index(FULL)]
        rope = self.cfg.rope(FULL, default_theta=1_000_000.0)
        factor = float(rope.get("partial_rotary_factor", 1.0)) if rope["rope_type"] == "proportional" else 1.0
        turning = int(factor * full_dim // 2)
        values = np.array([1.0] * turning + [1e30] * (full_dim // 2 - turning), dtype=np.float32)
        return [("rope_freqs.weight", values)]

    def gguf_name(self, hf_name: str) -> str:
        m = re.fullmatch(r"model\.layers\.(\d+)\.layer_scalar", hf_name)
        if m:
            return f"blk.{m.group(1)}.layer_output_scale.weight"
        return super().gguf_name(hf_name)

    def tokenizer_metadata(self, md: dict) -> dict:
        tokens, types = md.get("tokenizer.ggml.tokens") or [], md.get("tokenizer.ggml.token_type")
        if types is not None:
            md["tokenizer.ggml.token_type"] = [4 if t in VISIBLE_TOKENS else k for t, k in zip(tokens, types)]
        md["tokenizer.ggml.add_bos_token"] = True  # as llama.cpp writes it, and reads it whatever is written
        return md


# Parts of Gemma4ForConditionalGeneration that are no text model.
NOT_TEXT = ("vision_tower.", "audio_tower.", "embed_vision.", "embed_audio.", "multi_modal_projector.")


class Gemma4TextOfMultimodalConverter(Gemma4Converter):
    """HF Gemma4ForConditionalGeneration (E2B, E4B, 31B: text + vision + audio) -> GGUF "gemma4"
    holding the text model only."""

    architectures = ("Gemma4ForConditionalGeneration",)

    def __init__(self, cfg: HFConfig):
        top = {k: v for k, v in cfg.data.items() if not k.endswith("_config")}
        super().__init__(HFConfig({**top, **(cfg.data.get("text_config") or {})}))

    @staticmethod
    def _text_name(hf_name: str) -> str | None:
        name = hf_name.removeprefix("model.")
        if name.startswith(NOT_TEXT):
            return None
        if name.startswith("language_model."):
            rest = name.removeprefix("language_model.")
            return rest if rest.startswith(("model.", "lm_head.")) else f"model.{rest}"
        return hf_name

    def skip(self, hf_name: str) -> bool:
        name = self._text_name(hf_name)
        return name is None or super().skip(name)

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(self._text_name(hf_name) or hf_name)


# What `create` converts with, by config.json class (models/discovery.py finds it).
CONVERTERS = (Gemma4Converter, Gemma4TextOfMultimodalConverter)
