"""Ollama's manifests, layers, config blobs and digests, as bytes Ollama would write.

A manifest is Docker's distribution manifest v2. Ollama writes it (and its config, params
and messages blobs) with Go's json.Encoder: compact, a trailing newline, struct fields in
declaration order, map keys sorted, and '<', '>', '&' escaped as \\u003c, \\u003e, \\u0026.
Writing the same bytes matters: blobs are content-addressed, so byte-identical JSON gives
the digests Ollama gives, and models created by either program share layers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pollama.store.errors import StoreError

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
# Registries may serve OCI manifests; their JSON has the same shape.
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"


class MediaType:
    """Ollama's layer media types."""

    MODEL = "application/vnd.ollama.image.model"  # GGUF weights
    PROJECTOR = "application/vnd.ollama.image.projector"  # vision/mmproj GGUF
    ADAPTER = "application/vnd.ollama.image.adapter"  # LoRA GGUF
    TEMPLATE = "application/vnd.ollama.image.template"  # Go template text
    SYSTEM = "application/vnd.ollama.image.system"  # text
    PARAMS = "application/vnd.ollama.image.params"  # JSON object of options
    MESSAGES = "application/vnd.ollama.image.messages"  # JSON array of messages
    LICENSE = "application/vnd.ollama.image.license"  # text, one layer per license
    PROMPT = "application/vnd.ollama.image.prompt"  # legacy name of TEMPLATE
    EMBED = "application/vnd.ollama.image.embed"  # legacy, ignored by Ollama
    TENSOR = "application/vnd.ollama.image.tensor"  # MLX: one safetensors tensor per layer
    JSON = "application/vnd.ollama.image.json"  # MLX: a config file, named by the layer
    DRAFT = "application/vnd.ollama.image.draft"  # speculative-decoding draft model


LAYER_MEDIA_TYPES = frozenset(v for k, v in vars(MediaType).items() if k.isupper())
# Layers small enough to read into memory; anything bigger is refused, not loaded.
METADATA_MEDIA_TYPES = frozenset(
    {MediaType.TEMPLATE, MediaType.PROMPT, MediaType.SYSTEM, MediaType.PARAMS, MediaType.MESSAGES, MediaType.LICENSE}
)
MAX_METADATA_BYTES = 64 << 20
MAX_MANIFEST_BYTES = 32 << 20  # MLX manifests list one layer per tensor: thousands of layers
MAX_SIZE = (1 << 63) - 1  # Go's int64

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*/[A-Za-z0-9][A-Za-z0-9.+-]*")


def check_digest(digest: object, what: str = "digest") -> str:
    """Return digest if it is "sha256:" and 64 lowercase hex digits, else raise StoreError."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise StoreError(f"invalid {what} {digest!r}: want 'sha256:' followed by 64 lowercase hex digits")
    return digest


def is_digest(digest: object) -> bool:
    """Whether digest is a well-formed sha256 digest."""
    return isinstance(digest, str) and _DIGEST.fullmatch(digest) is not None


# -- Go's encoding/json ----------------------------------------------------------------------
def _go_float(x: float) -> str:
    if not math.isfinite(x):
        raise StoreError(f"cannot store {x} in JSON")
    r = repr(x)  # the shortest digits that round-trip, as Go's strconv 'g' -1 finds them
    if x != 0 and (abs(x) < 1e-6 or abs(x) >= 1e21):
        # Go writes exponent form here, trimming "e-07" to "e-7" (but keeping "e+21").
        return re.sub(r"e-0(\d)$", r"e-\1", r)
    text = format(Decimal(r), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _go_encode(value: Any, sort_keys: bool, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_go_float(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _go_encode(item, sort_keys, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        items = sorted(value.items()) if sort_keys else value.items()
        for i, (key, item) in enumerate(items):
            if not isinstance(key, str):
                raise StoreError(f"JSON object keys must be strings, not {type(key).__name__}")
            out.append(("," if i else "") + json.dumps(key, ensure_ascii=False) + ":")
            _go_encode(item, sort_keys, out)
        out.append("}")
    else:
        raise StoreError(f"cannot store a {type(value).__name__} in JSON")


# These characters occur in encoded JSON only inside strings, so replacing them in the
# whole text is exactly Go's HTML-safe string escaping.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def go_json(value: Any, sort_keys: bool = False) -> bytes:
    """Encode value as Go's json.Encoder does (trailing newline included).

    sort_keys=True for Go maps (params); False keeps dict order, as for Go structs.
    """
    out: list[str] = []
    try:
        _go_encode(value, sort_keys, out)
    except RecursionError:
        raise StoreError("JSON value is nested too deeply") from None
    return ("".join(out).translate(_GO_ESCAPES) + "\n").encode("utf-8", "surrogatepass")


def encode_params(params: dict[str, Any]) -> bytes:
    """The bytes of a params layer: a JSON object of options, keys sorted (a Go map)."""
    if not isinstance(params, dict):
        raise StoreError(f"params must be a JSON object, not {type(params).__name__}")
    return go_json(params, sort_keys=True)


def encode_messages(messages: list[dict[str, Any]]) -> bytes:
    """The bytes of a messages layer: a JSON array of {"role", "content", ...} objects."""
    _check_messages(messages, "messages")
    return go_json(list(messages))


# types/model.ConfigV2, in declaration order: (field, omitted when empty).
CONFIG_FIELDS: tuple[tuple[str, bool], ...] = (
    ("model_format", False),
    ("model_family", False),
    ("model_families", False),
    ("model_type", False),
    ("file_type", False),
    ("renderer", True),
    ("parser", True),
    ("requires", True),
    ("remote_host", True),
    ("remote_model", True),
    ("capabilities", True),
    ("context_length", True),
    ("embedding_length", True),
    ("base_name", True),
    ("draft", True),
    ("architecture", False),
    ("os", False),
)
_CONFIG_DEFAULTS = {
    "model_format": "",
    "model_family": "",
    "model_families": None,  # a nil Go slice
    "model_type": "",
    "file_type": "",
    "architecture": "amd64",  # what Ollama's create writes, whatever the machine
    "os": "linux",
}


def encode_config(config: dict[str, Any]) -> bytes:
    """The bytes of a config blob for config's fields, as Ollama's create writes them.

    Known fields: model_format ("gguf"), model_family, model_families, model_type (e.g.
    "135M"), file_type (e.g. "Q4_1"), renderer, parser, requires, remote_host, remote_model,
    capabilities, context_length, embedding_length, base_name, draft, architecture ("amd64"),
    os ("linux"). Unknown fields are refused: Ollama's struct would drop them silently.
    """
    if not isinstance(config, dict):
        raise StoreError(f"config must be a dict, not {type(config).__name__}")
    unknown = set(config) - {name for name, _ in CONFIG_FIELDS}
    if unknown:
        known = ", ".join(name for name, _ in CONFIG_FIELDS)
        raise StoreError(f"unknown config field(s) {', '.join(sorted(unknown))} (known: {known})")
    ordered: dict[str, Any] = {}
    for name, omit_empty in CONFIG_FIELDS:
        value = config.get(name, _CONFIG_DEFAULTS.get(name))
        if omit_empty and not value:
            continue
        ordered[name] = value
    return go_json(ordered)


# -- layers and manifests ----------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One blob of a model: its media type, digest ("sha256:<hex>") and size in bytes."""

    media_type: str
    digest: str
    size: int
    from_: str = ""  # JSON "from": the model this layer was taken from (Ollama's parent model)
    name: str = ""  # JSON "name": a tensor or file name (MLX layers)

    def __post_init__(self) -> None:
        check_digest(self.digest, "layer digest")
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE.fullmatch(self.media_type):
            raise StoreError(f"invalid media type {self.media_type!r} of layer {self.digest}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_SIZE:
            raise StoreError(f"invalid size {self.size!r} of layer {self.digest}")
        for key in ("from_", "name"):
            if not isinstance(getattr(self, key), str):
                raise StoreError(f"layer {self.digest}: {key.rstrip('_')!r} must be a string")

    def to_json(self) -> dict[str, Any]:
        """The layer as Ollama's manifest holds it (field order, empty from/name omitted)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Layer:
        """A layer from a manifest's JSON object; StoreError says what is wrong and where."""
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: a layer must be a JSON object")
        for key in ("mediaType", "digest", "size"):
            if key not in obj:
                raise StoreError(f"{where}: a layer has no {key!r}")
        try:
            return cls(obj["mediaType"], obj["digest"], obj["size"], obj.get("from") or "", obj.get("name") or "")
        except StoreError as e:
            raise StoreError(f"{where}: {e}") from None


@dataclass
class Manifest:
    """A model's manifest: its config blob and its layers, in order.

    digest, path and modified_at describe the file it was read from (None when built in memory);
    digest is the sha256 hex of the file's bytes, which Ollama shows as the model's ID.
    """

    config: Layer
    layers: list[Layer]
    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE
    digest: str | None = field(default=None, compare=False)
    path: Path | None = field(default=None, compare=False)
    modified_at: datetime | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        """Bytes of all layers and the config, as Ollama's list reports it."""
        return self.config.size + sum(layer.size for layer in self.layers)

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the digest, as `ollama list` prints the ID."""
        return (self.digest or "")[:12]

    def all_layers(self) -> list[Layer]:
        """The layers and then the config."""
        return [*self.layers, self.config]

    def layers_of(self, media_type: str) -> list[Layer]:
        """The layers with this media type, in manifest order."""
        return [layer for layer in self.layers if layer.media_type == media_type]

    def to_bytes(self) -> bytes:
        """The manifest file's bytes, exactly as Ollama writes them."""
        return go_json(
            {
                "schemaVersion": self.schema_version,
                "mediaType": self.media_type,
                "config": self.config.to_json(),
                "layers": [layer.to_json() for layer in self.layers],
            }
        )

    @classmethod
    def parse(cls, data: bytes, where: str = "manifest") -> Manifest:
        """Parse and validate a manifest's bytes; StoreError names `where` and the fault."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise StoreError(f"{where} is larger than a manifest can be ({MAX_MANIFEST_BYTES} bytes)")
        try:
            obj = json.loads(data)
        except RecursionError:
            raise StoreError(f"{where} is not a valid manifest: JSON nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise StoreError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise StoreError(f"{where} is not a JSON object")
        if obj.get("schemaVersion") != 2 or isinstance(obj.get("schemaVersion"), bool):
            raise StoreError(f"{where} has schemaVersion {obj.get('schemaVersion')!r}, expected 2")
        media_type = obj.get("mediaType", MANIFEST_MEDIA_TYPE)
        if media_type not in (MANIFEST_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE):
            raise StoreError(f"{where} has mediaType {media_type!r}, expected {MANIFEST_MEDIA_TYPE!r}")
        if "config" not in obj:
            raise StoreError(f"{where} has no config")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise StoreError(f"{where} has no list of layers")
        return cls(
            config=Layer.from_json(obj["config"], f"{where}, config"),
            layers=[Layer.from_json(layer, f"{where}, layer {i}") for i, layer in enumerate(layers)],
            media_type=media_type,
        )


def _check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise StoreError(f"{where} must be a JSON array of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise StoreError(f"{where}: message {i} must be an object with a string 'role'")
        if not isinstance(message.get("content", ""), str):
            raise StoreError(f"{where}: message {i} has a 'content' that is not a string")
    return messages


def parse_params(data: bytes, where: str) -> dict[str, Any]:
    """The options of a params layer (a JSON object)."""
    value = _parse_json(data, where)
    if not isinstance(value, dict):
        raise StoreError(f"{where} must be a JSON object of options")
    return value


def parse_messages(data: bytes, where: str) -> list[dict[str, Any]]:
    """The messages of a messages layer (a JSON array of {"role", "content"} objects)."""
    return _check_messages(_parse_json(data, where), where)


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """A config blob's fields (unknown fields, e.g. an old Ollama's "rootfs", are kept)."""
    value = _parse_json(data, where)
    if not isinstance(value, dict):
        raise StoreError(f"{where} must be a JSON object")
    return value


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise StoreError(f"{where}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{where} is not valid JSON ({e})") from None
