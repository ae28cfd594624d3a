"""From a model's manifest to what a runner needs: its layers read, their blobs checked."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollama.fs.gguf_format import GGUF_MAGIC
from pollama.store.blobs import BlobStore
from pollama.store.errors import StoreError
from pollama.store.manifest import Layer, Manifest, MediaType, parse_messages, parse_params
from pollama.store.names import ModelName

log = logging.getLogger(__name__)

# Layers a GGUF runner cannot use; resolve says so instead of failing later.
_SAFETENSORS_TYPES = (MediaType.TENSOR, MediaType.JSON)


@dataclass
class ResolvedModel:
    """Everything a runner needs from a model's manifest, with blob paths checked.

    model_path is None only for a model without weights (a remote model: config remote_host).
    template and system are None when the manifest has no such layer (the caller's default
    applies); params holds the options of the params layer; license has one entry per layer.
    """

    name: ModelName
    manifest: Manifest
    config: dict[str, Any]
    model_path: Path | None
    parent_model: str = ""
    projector_paths: list[Path] = field(default_factory=list)
    adapter_paths: list[Path] = field(default_factory=list)
    draft_path: Path | None = None
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)


def resolve_layers(blobs: BlobStore, model: ModelName, manifest: Manifest, config: dict[str, Any]) -> ResolvedModel:
    """Read each of manifest's layers into a ResolvedModel, checking the blobs it points to."""
    shown = model.display
    resolved = ResolvedModel(name=model, manifest=manifest, config=config, model_path=None)
    for layer in manifest.layers:
        kind = layer.media_type
        what = kind.rsplit(".", 1)[-1]  # "template", "params", ...
        if kind == MediaType.MODEL:
            resolved.model_path = _checked_gguf(blobs, layer, shown)
            resolved.parent_model = layer.from_
        elif kind == MediaType.PROJECTOR:
            resolved.projector_paths.append(_checked_gguf(blobs, layer, shown))
        elif kind == MediaType.ADAPTER:
            resolved.adapter_paths.append(_checked_gguf(blobs, layer, shown))
        elif kind == MediaType.DRAFT:
            resolved.draft_path = blobs.verify_blob(layer, shown)
        elif kind in (MediaType.TEMPLATE, MediaType.PROMPT):
            resolved.template = _text(blobs, layer, shown, "template")
        elif kind == MediaType.SYSTEM:
            resolved.system = _text(blobs, layer, shown, what)
        elif kind == MediaType.LICENSE:
            resolved.license.append(_text(blobs, layer, shown, what))
        elif kind == MediaType.PARAMS:
            data = blobs.read_small_blob(layer, shown, what)
            resolved.params = parse_params(data, f"params layer of model '{shown}'")
        elif kind == MediaType.MESSAGES:
            data = blobs.read_small_blob(layer, shown, what)
            resolved.messages = parse_messages(data, f"messages layer of model '{shown}'")
        elif kind == MediaType.EMBED:
            log.info("model '%s' has a legacy embed layer; it is ignored, as Ollama does", shown)
        elif kind in _SAFETENSORS_TYPES:
            raise StoreError(f"model '{shown}' is a safetensors (MLX) model, which pollama cannot run")
        else:
            raise StoreError(f"model '{shown}' has a layer of unknown media type {kind!r}")
    if resolved.model_path is None and not config.get("remote_host"):
        raise StoreError(f"model '{shown}' has no model layer")
    return resolved


def _text(blobs: BlobStore, layer: Layer, model: str, what: str) -> str:
    # Go keeps arbitrary bytes in a string; replacing bad UTF-8 is the nearest to that.
    return blobs.read_small_blob(layer, model, what).decode("utf-8", "replace")


def _checked_gguf(blobs: BlobStore, layer: Layer, model: str) -> Path:
    path = blobs.verify_blob(layer, model)
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise StoreError(f"blob {layer.digest} of model '{model}' is not a GGUF file")
    return path
