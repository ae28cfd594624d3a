"""The reference side: the same named tensors from transformers (float32, CPU), by forward hooks.

Our names map onto the HF modules every supported architecture shares:

    token_embd        the input embedding module's output (Gemma's already scaled by sqrt(dim))
    blk.N.attn_out    layer N's attention after its output projection (o_proj; BERT: attention.output.dense)
    blk.N.ffn_out     layer N's MLP after its down projection (mlp; BERT: output.dense)
    blk.N.out         layer N's output: the residual stream after the layer
    output_norm       the final norm's output (decoders)
    logits            the model's logits (decoders)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Where each recorded tensor comes from inside one HF layer, by the layer's family.
DECODER_HOOKS = {"attn_out": "self_attn", "ffn_out": "mlp"}
ENCODER_HOOKS = {"attn_out": "attention.output.dense", "ffn_out": "output.dense"}


class ReferenceError(ValueError):
    """A reference folder transformers cannot run (missing, unknown class, no torch)."""


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a reference is a local folder: never the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ReferenceError(f"compare needs PyTorch and transformers for the reference: pip install torch transformers ({e})") from None
    # Progress bars and advice on stderr would bury the comparison's one-line verdict.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return torch, transformers


def load_reference(folder: str | Path):
    """The HF model of a checkpoint folder (class named by config.json), float32, eval mode."""
    from pollama.models.checkpoint import ConvertError, read_hf_config

    folder = Path(folder)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ReferenceError(f"{folder}: not a Hugging Face checkpoint folder (no config.json)")
    try:
        _, arch = read_hf_config(folder)
    except ConvertError as e:
        raise ReferenceError(str(e)) from None
    torch, transformers = _import_transformers()
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ReferenceError(f"{folder / 'config.json'}: transformers {transformers.__version__} has no class {arch!r}")
    try:
        # Eager attention: the plain softmax(q k^T) v, as the paper (and our reference backend) computes it.
        model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise ReferenceError(f"{folder}: transformers cannot load it ({str(e).splitlines()[0]})") from None
    return model.eval()


def reference_layer_count(model) -> int:
    """num_hidden_layers of a text model's config (of a vision-language model's text_config)."""
    config = model.config
    n_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(n_layers, int):
        n_layers = getattr(getattr(config, "text_config", None), "num_hidden_layers", None)
    if not isinstance(n_layers, int):
        raise ReferenceError(f"{type(model).__name__}: its config names no num_hidden_layers")
    return n_layers


def _layers(model, n_layers: int):
    """The module list of the model's layers: the one ModuleList with n_layers entries that are layers."""
    torch, _ = _import_transformers()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and name.endswith(("layers", "layer")):
            return name, module
    raise ReferenceError(f"{type(model).__name__}: cannot find its list of {n_layers} layers")


def _submodule(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def reference_tensors(model, tokens: Sequence[int]) -> dict[str, np.ndarray]:
    """Run the HF model on one sequence of token ids; every tensor we record, by our name, [tokens, ...]."""
    torch, _ = _import_transformers()
    n_layers = reference_layer_count(model)
    _, layers = _layers(model, n_layers)
    encoder = hasattr(layers[0], "attention") and not hasattr(layers[0], "self_attn")
    hooks = ENCODER_HOOKS if encoder else DECODER_HOOKS
    found: dict[str, np.ndarray] = {}
    handles = []

    def keep(name: str):
        def hook(_module, _inputs, output):
            found[name] = _first(output).detach()[0].to(torch.float32).numpy().copy()
        return hook

    try:
        base = getattr(model, "base_model", model)
        embed = base.embeddings if encoder else model.get_input_embeddings()
        handles.append(embed.register_forward_hook(keep("token_embd")))
        for i, layer in enumerate(layers):
            for ours, path in hooks.items():
                module = _submodule(layer, path)
                if module is None:
                    raise ReferenceError(f"{type(layer).__name__} has no {path!r} module to compare {ours} with")
                handles.append(module.register_forward_hook(keep(f"blk.{i}.{ours}")))
            handles.append(layer.register_forward_hook(keep(f"blk.{i}.out")))
        norm = getattr(base, "norm", None)
        if norm is not None and not encoder:
            handles.append(norm.register_forward_hook(keep("output_norm")))
        with torch.no_grad():
            out = model(torch.tensor([list(tokens)], dtype=torch.long))
    finally:
        for handle in handles:
            handle.remove()
    logits = getattr(out, "logits", None)
    if logits is not None:
        found["logits"] = logits[0].to(torch.float32).numpy().copy()
    return found
