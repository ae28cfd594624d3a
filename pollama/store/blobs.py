"""The store's blobs/ folder: content-addressed layer bytes at blobs/sha256-<64 hex>.

A blob is renamed into place only when its sha256 is the digest expected of it, and checked
against its digest before use (see BlobVerifier for why remembering checked files by their
identity makes that cheap). The manifests that name blobs are Store's (store.py).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

from pollama.store.errors import DigestMismatch, StoreError
from pollama.store.files import CHUNK, BlobVerifier, _commit, _fsync_dir, _temp_file, sha256_file
from pollama.store.manifest import LAYER_MEDIA_TYPES, MAX_METADATA_BYTES, Layer, check_digest, is_digest

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class BlobStore:
    """Blobs in blobs_dir, checked by verifier; a Store is this plus the manifests."""

    def __init__(self, blobs_dir: Path, verifier: BlobVerifier):
        self.blobs_dir = blobs_dir
        self.verifier = verifier
        self._fix_blob_names()

    def _fix_blob_names(self) -> None:
        # Very old Ollama named blobs "sha256:<hex>"; Ollama renames them at start, so do we.
        if not self.blobs_dir.is_dir():
            return
        for path in self.blobs_dir.glob("sha256:*"):
            new = self.blobs_dir / path.name.replace(":", "-", 1)
            if is_digest(path.name) and not new.exists():
                os.replace(path, new)

    def blob_path(self, digest: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        check_digest(digest)
        return self.blobs_dir / ("sha256-" + digest[len("sha256:") :])

    def has_blob(self, digest: str) -> bool:
        """Whether the blob with this digest is present (its bytes are not checked)."""
        return self.blob_path(digest).is_file()

    # -- writing ------------------------------------------------------------------------------
    def write_blob(self, source: Source, expected_digest: str | None = None) -> str:
        """Store bytes, a file's content (path) or a binary stream as a blob; return its digest.

        The bytes go to a temp file while being hashed and are renamed into place only if
        their digest is expected_digest (when given); otherwise DigestMismatch. If a blob
        with expected_digest is already present and intact, source is not read at all.
        """
        if expected_digest is not None:
            check_digest(expected_digest, "expected digest")
            existing = self.blob_path(expected_digest)
            if existing.is_file() and self._blob_ok(existing, expected_digest):
                return expected_digest
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self._write_stream(io.BytesIO(bytes(source)), expected_digest)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return self._write_stream(f, expected_digest)
        if hasattr(source, "read"):
            return self._write_stream(source, expected_digest)
        raise TypeError(f"write_blob takes a path, bytes or a binary file, not {type(source).__name__}")

    def _write_stream(self, stream: BinaryIO, expected_digest: str | None) -> str:
        h = hashlib.sha256()
        temp, f = _temp_file(self.blobs_dir)
        try:
            with f:
                while chunk := stream.read(CHUNK):
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(f"write_blob needs a binary stream; read() gave {type(chunk).__name__}")
                    h.update(chunk)
                    f.write(chunk)
                digest = "sha256:" + h.hexdigest()
                if expected_digest is not None and digest != expected_digest:
                    raise DigestMismatch(f"blob content has digest {digest}, expected {expected_digest}")
                dest = self.blob_path(digest)
                if dest.is_file() and self.verifier.is_known(dest, digest):
                    f.close()
                    temp.unlink()
                else:
                    # Replaces a blob of the right name but wrong bytes, healing the store.
                    _commit(temp, f, dest)
            self.verifier.remember(dest, digest)
            return digest
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def partial_blob_path(self, digest: str) -> Path:
        """Where a download of this blob is assembled (Ollama's name: "<blob>-partial")."""
        path = self.blob_path(digest)
        return path.with_name(path.name + "-partial")

    def commit_partial_blob(self, partial: Path, digest: str) -> Path:
        """Make a finished download visible as blob digest, only if its bytes hash to it.

        On a mismatch the partial file is deleted (its bytes cannot be trusted for a resume)
        and DigestMismatch names both digests.
        """
        dest = self.blob_path(digest)
        if partial.parent != dest.parent:
            raise StoreError(f"refusing to commit {partial}: not in {self.blobs_dir}")
        actual = sha256_file(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(f"downloaded blob has digest {actual}, expected {digest}; the download was deleted")
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
        self.verifier.remember(dest, digest)
        return dest

    def add_layer(self, source: Source, media_type: str, *, from_: str = "", name: str = "") -> Layer:
        """Write source as a blob and return the Layer that describes it."""
        if media_type not in LAYER_MEDIA_TYPES:
            raise StoreError(f"unknown layer media type {media_type!r}")
        digest = self.write_blob(source)
        return Layer(media_type, digest, self.blob_path(digest).stat().st_size, from_, name)

    def delete_blob(self, path: Path) -> None:
        """Delete the blob file at path and what the verifier knew of it."""
        path.unlink(missing_ok=True)
        self.verifier.forget(path)

    # -- checking -----------------------------------------------------------------------------
    def _blob_ok(self, path: Path, digest: str) -> bool:
        if self.verifier.is_known(path, digest):
            return True
        if sha256_file(path) != digest:
            return False
        self.verifier.remember(path, digest)
        return True

    def check_blob_present(self, layer: Layer, model: str) -> None:
        """StoreError unless layer's blob is in the store with the size layer says."""
        path = self.blob_path(layer.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"blob {layer.digest} of model '{model}' is not in the store; write it first") from None
        if size != layer.size:
            raise StoreError(f"layer {layer.digest} of model '{model}' says {layer.size} bytes, its blob has {size}")

    def verify_blob(self, layer: Layer, model: str = "") -> Path:
        """The path of layer's blob after checking it exists, has its size and hashes to its digest."""
        path = self.blob_path(layer.digest)
        owner = f" of model '{model}'" if model else ""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"blob {layer.digest}{owner} is missing from {self.blobs_dir}") from None
        if size != layer.size:
            raise DigestMismatch(
                f"blob {layer.digest}{owner} is {size} bytes but its manifest says {layer.size}: "
                f"the file is damaged or incomplete; remove the model and pull or create it again"
            )
        if not self._blob_ok(path, layer.digest):
            raise DigestMismatch(
                f"blob {layer.digest}{owner} does not match its digest: the file is damaged; "
                f"remove the model and pull or create it again"
            )
        return path

    def read_small_blob(self, layer: Layer, model: str, what: str) -> bytes:
        """The bytes of a metadata blob (config, template, params, ...), checked against layer."""
        owner = f" of model '{model}'" if model else ""
        if layer.size > MAX_METADATA_BYTES:
            raise StoreError(f"{what} blob {layer.digest}{owner} is {layer.size} bytes, too large to read")
        path = self.blob_path(layer.digest)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_METADATA_BYTES + 1)
        except FileNotFoundError:
            raise StoreError(f"{what} blob {layer.digest}{owner} is missing from {self.blobs_dir}") from None
        if len(data) != layer.size or "sha256:" + hashlib.sha256(data).hexdigest() != layer.digest:
            raise DigestMismatch(
                f"{what} blob {layer.digest}{owner} does not match its digest or size: the file is damaged"
            )
        return data
