"""Ollama's on-disk model store: the same layout, so an existing Ollama store works unchanged.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   manifest JSON (see manifest.py)
    <root>/blobs/sha256-<64 hex>                        content-addressed layer bytes (blobs.py)

root is $OLLAMA_MODELS, else ~/.ollama/models.

Safety rules, each checked where a path is made:
- a name reaches the disk only after passing Ollama's grammar (names.py), and a digest only
  after matching ^sha256:[0-9a-f]{64}$, so neither can name a path outside the store;
- every write goes to a temp file in the destination's directory, is fsynced, renamed into
  place and the directory fsynced: a reader sees the old file or the whole new one, never a
  part. A blob is renamed into place only when its sha256 is the digest expected of it;
- temp files are named ``.pollama-tmp-<pid>-<random>``: not a digest and not a valid name
  part, so this store and Ollama both ignore them (Ollama's prune deletes them after an
  hour); a later Store() deletes those whose writer process is gone;
- blobs are checked against their digest before use (resolve.py); see BlobVerifier for why
  a cache keyed by file identity and mtime makes that cheap.

Store adds to BlobStore (blobs.py) the manifests: names, reading and writing them, list,
copy, remove and prune; resolve.py turns a manifest into what a runner needs.

There is no lock between processes, as in Ollama: removing a model while another process
writes a model that shares its blobs can race (the other write then fails its blob checks).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pollama import envconfig
from pollama.store.blobs import BlobStore
from pollama.store.errors import InvalidName, ModelNotFound, StoreError
from pollama.store.files import TEMP_PREFIX, BlobVerifier, _fsync_dir, atomic_write, remove_stale_temp_files
from pollama.store.manifest import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    Layer,
    Manifest,
    encode_config,
    is_digest,
    parse_config,
)
from pollama.store.names import PART_KINDS, ModelName, is_valid_part
from pollama.store.resolve import ResolvedModel, resolve_layers

log = logging.getLogger(__name__)

NameLike = str | ModelName


def default_root() -> Path:
    """$OLLAMA_MODELS (trimmed of spaces and quotes, as Ollama reads it), else ~/.ollama/models."""
    return envconfig.models_dir()


@dataclass
class ModelInfo:
    """A model as `list` shows it: name, manifest digest (hex), total size and when it changed."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    manifest: Manifest = field(repr=False)


_DEFAULT_CACHE = object()


class Store(BlobStore):
    """An Ollama model store rooted at root (default: $OLLAMA_MODELS or ~/.ollama/models).

    hash_cache is the file remembering which blobs were verified (default
    $POLLAMA_CACHE/verified-blobs.json); None keeps that memory in this process only.
    Opening a store deletes temp files left by writers that died.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, hash_cache: Any = _DEFAULT_CACHE):
        self.root = Path(root) if root is not None else default_root()
        self.manifests_dir = self.root / "manifests"
        if hash_cache is _DEFAULT_CACHE:
            from pollama.store.embedded import cache_dir

            hash_cache = cache_dir() / "verified-blobs.json"
        for top in (self.root / "blobs", self.manifests_dir):
            remove_stale_temp_files(top)
        super().__init__(self.root / "blobs", BlobVerifier(Path(hash_cache) if hash_cache is not None else None))

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- names and their manifest files -----------------------------------------------------
    def _on_disk_parts(self, name: ModelName) -> tuple[tuple[str, ...], bool]:
        """name's parts as the directories on disk spell them, and whether all four exist.

        Each part matches an existing entry case-insensitively (the exact spelling first), as
        Ollama matches names; parts with no entry keep the spelling given.
        """
        directory = self.manifests_dir
        found: list[str] = []
        complete = True
        for kind, part in zip(PART_KINDS, name.parts):
            entry = part
            if complete and not os.path.lexists(directory / part):
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    names = []
                matches = [n for n in names if n.lower() == part.lower() and is_valid_part(kind, n)]
                if matches:
                    entry = matches[0]
                else:
                    complete = False
            found.append(entry)
            directory = directory / entry
        return tuple(found), complete

    def _manifest_path(self, parts: tuple[str, ...]) -> Path:
        path = self.manifests_dir.joinpath(*parts)
        # Name parts are validated before they get here; this is the second lock.
        if os.path.commonpath([os.path.abspath(path), os.path.abspath(self.manifests_dir)]) != os.path.abspath(
            self.manifests_dir
        ):
            raise StoreError(f"refusing path {path} outside {self.manifests_dir}")
        return path

    def _find_manifest(self, name: ModelName) -> tuple[ModelName, Path] | None:
        """The on-disk spelling and manifest file of name, or None if it has none."""
        parts, complete = self._on_disk_parts(name)
        path = self._manifest_path(parts)
        if not complete or not path.is_file():
            return None
        return name.with_parts(parts), path

    def _manifest_target(self, name: ModelName) -> tuple[ModelName, Path]:
        """Where to write name's manifest: into existing directories of any case, as Ollama does."""
        parts, _ = self._on_disk_parts(name)
        return name.with_parts(parts), self._manifest_path(parts)

    # -- manifests ----------------------------------------------------------------------------
    def write_manifest(self, name: NameLike, config: dict[str, Any], layers: list[Layer]) -> Manifest:
        """Write config as the config blob and a manifest of layers under name; return it.

        Every layer's blob must already be in the store with the size the layer says.
        """
        model = ModelName.parse(name)
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"layers must be Layer objects, not {type(layer).__name__}")
            if layer.media_type not in LAYER_MEDIA_TYPES:
                raise StoreError(f"unknown layer media type {layer.media_type!r}")
            self.check_blob_present(layer, model.display)
        config_bytes = encode_config(config)
        config_layer = Layer(CONFIG_MEDIA_TYPE, self.write_blob(config_bytes), len(config_bytes))
        manifest = Manifest(config=config_layer, layers=list(layers))
        return self._put_manifest(model, manifest.to_bytes())

    def write_manifest_bytes(self, name: NameLike, data: bytes) -> Manifest:
        """Store a manifest's bytes verbatim (as pulled) after checking them and their blobs."""
        model = ModelName.parse(name)
        manifest = Manifest.parse(data, f"manifest for model '{model.display}'")
        for layer in manifest.all_layers():
            self.check_blob_present(layer, model.display)
        return self._put_manifest(model, data)

    def _put_manifest(self, model: ModelName, data: bytes) -> Manifest:
        model, path = self._manifest_target(model)
        atomic_write(path, data)
        return self._load_manifest(model, path)

    def _load_manifest(self, model: ModelName, path: Path) -> Manifest:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(MAX_MANIFEST_BYTES + 1)  # a hostile giant is refused by parse
        except FileNotFoundError:
            raise ModelNotFound(model.display) from None
        except IsADirectoryError:
            raise ModelNotFound(model.display) from None
        manifest = Manifest.parse(data, f"manifest of model '{model.display}' ({path})")
        manifest.digest = hashlib.sha256(data).hexdigest()
        manifest.path = path
        manifest.modified_at = datetime.fromtimestamp(st.st_mtime).astimezone()
        return manifest

    def exists(self, name: NameLike) -> bool:
        """Whether a manifest exists for name (any case)."""
        return self._find_manifest(ModelName.parse(name)) is not None

    def canonical_name(self, name: NameLike) -> ModelName:
        """name spelled as it is on disk; ModelNotFound if there is no such model."""
        found = self._find_manifest(ModelName.parse(name))
        if found is None:
            raise ModelNotFound(_shown(name))
        return found[0]

    def read_manifest(self, name: NameLike) -> Manifest:
        """The manifest of name (matched case-insensitively); ModelNotFound if there is none."""
        found = self._find_manifest(ModelName.parse(name))
        if found is None:
            raise ModelNotFound(_shown(name))
        return self._load_manifest(*found)

    def read_config(self, name: NameLike, manifest: Manifest | None = None) -> dict[str, Any]:
        """The config blob of name's manifest (model_format, model_family, file_type, ...)."""
        manifest = manifest or self.read_manifest(name)
        shown = _shown(name)
        return parse_config(self.read_small_blob(manifest.config, shown, "config"), f"config of model '{shown}'")

    def _walk_manifests(self) -> Iterator[tuple[ModelName, Path]]:
        """Every file at manifests/<host>/<namespace>/<model>/<tag> with a valid name."""
        if not self.manifests_dir.is_dir():
            return
        for dirpath, dirs, files in os.walk(self.manifests_dir):
            rel = Path(dirpath).relative_to(self.manifests_dir).parts
            if len(rel) >= 3:
                dirs.clear()  # manifests sit exactly four levels down
            if len(rel) != 3:
                continue
            for tag in sorted(files):
                if tag.startswith(TEMP_PREFIX):
                    continue
                try:
                    yield ModelName.from_parts((*rel, tag)), Path(dirpath) / tag
                except InvalidName:
                    log.warning("ignoring %s: not a valid model name", Path(dirpath) / tag)

    def _all_manifests(self) -> tuple[list[tuple[ModelName, Manifest]], list[Path]]:
        """(name, manifest) of every readable manifest, and the paths of unreadable ones."""
        good, bad = [], []
        for model, path in self._walk_manifests():
            try:
                good.append((model, self._load_manifest(model, path)))
            except (StoreError, OSError) as e:
                log.warning("ignoring manifest %s: %s", path, e)
                bad.append(path)
        return good, bad

    def list(self) -> list[ModelInfo]:
        """Every model in the store, newest first (unreadable manifests are logged and skipped)."""
        good, _bad = self._all_manifests()
        infos = [ModelInfo(model, m.digest or "", m.size, m.modified_at, m) for model, m in good]  # type: ignore[arg-type]
        infos.sort(key=lambda i: (-i.modified_at.timestamp(), i.name.display))
        return infos

    def copy(self, src: NameLike, dst: NameLike) -> ModelName:
        """Copy src's manifest bytes to dst (same digest, shared blobs); return dst's name."""
        source = self.canonical_name(src)
        target = ModelName.parse(dst)
        _, src_path = self._find_manifest(source)  # type: ignore[misc]
        if source == target:
            return source
        data = src_path.read_bytes()
        Manifest.parse(data, f"manifest of model '{source.display}'")  # never spread a broken manifest
        target, dst_path = self._manifest_target(target)
        atomic_write(dst_path, data)
        return target

    def remove(self, name: NameLike) -> None:
        """Delete name's manifest, then every blob of it that no other manifest references."""
        model = ModelName.parse(name)
        found = self._find_manifest(model)
        if found is None:
            raise ModelNotFound(_shown(name))
        model, path = found
        try:
            manifest: Manifest | None = self._load_manifest(model, path)
        except StoreError as e:
            log.warning("removing broken manifest %s (%s); its blobs are left for a prune", path, e)
            manifest = None
        path.unlink()
        _fsync_dir(path.parent)
        self._prune_empty_dirs(path.parent)
        if manifest is not None:
            self._delete_unreferenced(d.digest for d in manifest.all_layers())

    def delete_unreferenced_blobs(self, digests) -> None:
        """Delete those of digests' blobs that no manifest references (after a pull replaced one)."""
        self._delete_unreferenced(list(digests))

    def _delete_unreferenced(self, digests) -> None:
        others, bad = self._all_manifests()
        if bad:
            # A manifest we cannot read may reference any blob: deleting could break it.
            log.warning("not deleting blobs: %d manifest(s) could not be read (%s)", len(bad), bad[0])
            return
        in_use = {layer.digest for _, m in others for layer in m.all_layers()}
        for digest in set(digests) - in_use:
            self.delete_blob(self.blob_path(digest))

    def prune(self, grace_seconds: float = 3600) -> int:
        """What Ollama's server does at start (PruneLayers, then PruneDirectory): delete blobs
        no manifest references and files in blobs/ whose names are no digest (a download's stale
        `-partial` file), both only when untouched for `grace_seconds` (Ollama's hour, so that a
        create or pull under way keeps its blobs), then empty manifest folders. Nothing is
        deleted when a manifest cannot be read (it may reference any blob). Returns how many
        files went."""
        manifests, bad = self._all_manifests()
        if bad:
            log.warning("corrupt manifests detected, skipping prune operation (%s); re-pull or delete to clear", bad[0])
            return 0
        if not self.blobs_dir.is_dir():
            return 0
        now, removed, candidates = time.time(), 0, {}
        for path in self.blobs_dir.iterdir():
            # Our own temp files are a live writer's, or removed when stale (remove_stale_temp_files).
            if not path.is_file() or path.name.startswith(TEMP_PREFIX) or now - path.stat().st_mtime < grace_seconds:
                continue
            digest = path.name.replace("-", ":", 1)
            if is_digest(digest):
                candidates[digest] = path
            else:
                path.unlink(missing_ok=True)
                removed += 1
        in_use = {layer.digest for _, m in manifests for layer in m.all_layers()}
        unused = set(candidates) - in_use
        log.info("total blobs: %d", len(candidates))
        for digest in unused:
            self.delete_blob(candidates[digest])
        log.info("total unused blobs removed: %d", len(unused))
        if self.manifests_dir.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(self.manifests_dir), reverse=True):
                if Path(dirpath) != self.manifests_dir:
                    try:
                        os.rmdir(dirpath)  # only empty ones go
                    except OSError:
                        pass
        return removed + len(unused)

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Walk up from the model's tag directory, stopping at the first non-empty one.
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- resolve ------------------------------------------------------------------------------
    def resolve(self, name: NameLike) -> ResolvedModel:
        """Everything needed to run name: checked blob paths, template, system, params, ..."""
        found = self._find_manifest(ModelName.parse(name))
        if found is None:
            raise ModelNotFound(_shown(name))
        model, path = found
        manifest = self._load_manifest(model, path)
        return resolve_layers(self, model, manifest, self.read_config(model, manifest))


def _shown(name: NameLike) -> str:
    """How a name appears in messages: as the user wrote it, or Ollama's short display form."""
    return name.display if isinstance(name, ModelName) else name
