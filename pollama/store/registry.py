"""pull and push: models between a store and an OCI distribution registry, as Ollama does.

Protocol (ollama-facts.md §1.5), for a name host/namespace/model:tag:

    pull  GET  /v2/<ns>/<model>/manifests/<tag>     then each missing layer (and the config):
          GET  /v2/<ns>/<model>/blobs/<digest>      in ranged parts (registry_download.py)
          verify every new blob, write the manifest bytes verbatim, prune the old version's blobs
    push  HEAD /v2/<ns>/<model>/blobs/<digest>      (present: skip)
          POST /v2/<ns>/<model>/blobs/uploads/      (?mount=<digest>&from=<repo>: 201 = mounted)
          PATCH <location> per chunk, PUT <location>?digest=<digest>
          PUT  /v2/<ns>/<model>/manifests/<tag>

Progress goes to a callback as the dicts of Ollama's /api/pull and /api/push streams.
Every manifest from a registry is checked before anything touches the disk: digests must be
sha256:<64 hex> (they become file names), media types must be Ollama's, sizes bounded.

Entry points: pull_model / push_model (blocking; progress callback, cancel Event), and for
servers transfer_events (async iterator) or stream_transfer (iterator, errors as objects).
HTTP, redirects and auth: registry_client.py; Ollama's signed tokens: registry_signing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pollama import envconfig
from pollama.store.errors import StoreError
from pollama.store.manifest import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_BYTES,
    MAX_METADATA_BYTES,
    METADATA_MEDIA_TYPES,
    OCI_MANIFEST_MEDIA_TYPE,
    Layer,
    Manifest,
)
from pollama.store.names import ModelName, parse_name
from pollama.store.registry_client import (
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    TransferCancelled,
    TransferSettings,
    TransientError,
)
from pollama.store.registry_download import download_blob
from pollama.store.store import Store

__all__ = [
    "RegistryError",
    "RegistryNotFound",
    "TransferCancelled",
    "TransferResult",
    "TransferSettings",
    "pull_model",
    "push_model",
    "stream_transfer",
    "transfer_events",
]

Progress = Callable[[dict[str, Any]], None]

OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
# The largest layer accepted from a registry. The biggest GGUFs are under 1 TB; the bound
# keeps a hostile size from reserving absurd sparse files or overflowing arithmetic.
MAX_LAYER_BYTES = 4 << 40


@dataclass
class TransferResult:
    """What a pull or push did: blobs moved, blobs already there, bytes sent or received."""

    manifest: Manifest
    transferred_blobs: int = 0
    skipped_blobs: int = 0
    mounted_blobs: int = 0
    transferred_bytes: int = 0


def _status(digest: str, verb: str, total: int, completed: int) -> dict[str, Any]:
    return {"status": f"{verb} {digest[7:19]}", "digest": digest, "total": total, "completed": completed}


def _unique(layers: list[Layer]) -> list[Layer]:
    seen: set[str] = set()
    return [layer for layer in layers if not (layer.digest in seen or seen.add(layer.digest))]


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise TransferCancelled(f"{what} cancelled")


# -- pull ----------------------------------------------------------------------------------------
def check_registry_manifest(data: bytes, where: str) -> Manifest:
    """Parse a manifest a registry sent, refusing what a model cannot be made of."""
    manifest = Manifest.parse(data, where)  # digests, sizes and the manifest's media type
    if manifest.config.media_type not in (CONFIG_MEDIA_TYPE, OCI_CONFIG_MEDIA_TYPE):
        raise RegistryError(f"{where}: config has unknown media type {manifest.config.media_type!r}")
    if manifest.config.size > MAX_METADATA_BYTES:
        raise RegistryError(f"{where}: config {manifest.config.digest} is {manifest.config.size} bytes, too large")
    for layer in manifest.layers:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise RegistryError(
                f"{where}: layer {layer.digest} has unknown media type {layer.media_type!r} (not an Ollama model layer)"
            )
        limit = MAX_METADATA_BYTES if layer.media_type in METADATA_MEDIA_TYPES else MAX_LAYER_BYTES
        if layer.size > limit:
            raise RegistryError(f"{where}: layer {layer.digest} is {layer.size} bytes, more than the {limit} allowed")
    return manifest


def pull_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    credentials: tuple[str, str] | None = None,
    settings: TransferSettings | None = None,
) -> TransferResult:
    """Pull name from its registry into store, reporting Ollama's progress dicts.

    Interrupted pulls (an error, cancel, Ctrl+C, a crash) leave <blob>-partial files that the
    next pull resumes from. Raises RegistryError (or another StoreError) with a one-line
    message naming the model, blob or registry at fault.
    """
    model = parse_name(name)
    emit = progress or (lambda _status: None)
    where = f"manifest of '{model.display}' from {model.host}"
    with RegistryClient(model, insecure=insecure, credentials=credentials, settings=settings) as client:
        emit({"status": "pulling manifest"})
        try:
            _, data = client.retrying(
                lambda: client.request(
                    "GET",
                    client.manifest_url(),
                    f"pull manifest of '{model.display}'",
                    headers={"Accept": f"{MANIFEST_MEDIA_TYPE}, {OCI_MANIFEST_MEDIA_TYPE}"},
                    limit=MAX_MANIFEST_BYTES,
                ),
                cancel,
            )
        except RegistryNotFound:
            raise RegistryNotFound(f"pull model manifest: model '{model.display}' not found on {model.host}") from None
        try:
            manifest = check_registry_manifest(data, where)
        except RegistryError:
            raise
        except StoreError as e:
            raise RegistryError(str(e)) from None
        result = TransferResult(manifest)

        previous = _previous_digests(store, model)
        downloads = []
        for layer in _unique(manifest.all_layers()):
            _check_cancel(cancel, f"pull of '{model.display}'")
            path = store.blob_path(layer.digest)  # the digest is checked; this is the only path made of it
            if path.is_file() and path.stat().st_size == layer.size:
                emit(_status(layer.digest, "pulling", layer.size, layer.size))
                result.skipped_blobs += 1
                continue
            emit(_status(layer.digest, "pulling", layer.size, 0))
            job = download_blob(
                store,
                client,
                layer.digest,
                layer.size,
                lambda done, layer=layer: emit(_status(layer.digest, "pulling", layer.size, done)),
                cancel,
            )
            downloads.append(job)
            result.transferred_blobs += 1
            result.transferred_bytes += job.transferred

        emit({"status": "verifying sha256 digest"})
        for job in downloads:
            job.verify()
        emit({"status": "writing manifest"})
        result.manifest = store.write_manifest_bytes(model, data)
        unused = previous - {layer.digest for layer in manifest.all_layers()}
        if unused and not envconfig.no_prune():
            emit({"status": "removing unused layers"})
            store.delete_unreferenced_blobs(unused)
        emit({"status": "success"})
        return result


def _previous_digests(store: Store, model: ModelName) -> set[str]:
    try:
        return {layer.digest for layer in store.read_manifest(model).all_layers()}
    except StoreError:
        return set()


# -- push ----------------------------------------------------------------------------------------
def push_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    credentials: tuple[str, str] | None = None,
    settings: TransferSettings | None = None,
) -> TransferResult:
    """Push model name from store to the registry its name's host names.

    Blobs the registry already has are skipped, layers taken from another model of the same
    registry are mounted from it, the rest uploaded in chunks; the manifest goes last.
    """
    emit = progress or (lambda _status: None)
    emit({"status": "retrieving manifest"})
    model = store.canonical_name(name)
    manifest = store.read_manifest(model)
    with open(manifest.path, "rb") as f:  # type: ignore[arg-type]
        data = f.read(MAX_MANIFEST_BYTES + 1)
    Manifest.parse(data, f"manifest of model '{model.display}'")
    result = TransferResult(manifest)
    with RegistryClient(model, insecure=insecure, credentials=credentials, settings=settings) as client:
        for layer in _unique(manifest.all_layers()):
            _check_cancel(cancel, f"push of '{model.display}'")
            path = store.verify_blob(layer, model.display)  # never push damaged bytes
            what = f"push blob {layer.digest}"
            head = client.blob_url(layer.digest)
            response, _ = client.retrying(lambda head=head, what=what: client.request("HEAD", head, what, ok=(200, 404)), cancel)
            if response.status_code == 200:
                emit(_status(layer.digest, "pushing", layer.size, layer.size))
                result.skipped_blobs += 1
                continue
            emit(_status(layer.digest, "pushing", layer.size, 0))
            location = _start_upload(client, layer, model, what)
            if location is None:
                emit(_status(layer.digest, "pushing", layer.size, layer.size))
                result.mounted_blobs += 1
                continue
            sent = _upload(client, location, path, layer, what, emit, cancel)
            result.transferred_blobs += 1
            result.transferred_bytes += sent
        emit({"status": "pushing manifest"})
        client.retrying(
            lambda: client.request(
                "PUT",
                client.manifest_url(),
                f"push manifest of '{model.display}'",
                ok=(200, 201, 202),
                headers={"Content-Type": manifest.media_type},
                content=data,
            ),
            cancel,
        )
    emit({"status": "success"})
    return result


def _mount_source(layer: Layer, model: ModelName) -> str | None:
    """The repository on the same registry that layer came from, if any (for a cross-mount)."""
    if not layer.from_:
        return None
    try:
        source = parse_name(layer.from_)
    except StoreError:
        return None
    if source.host.lower() != model.host.lower() or (source.namespace, source.model) == (model.namespace, model.model):
        return None
    return f"{source.namespace}/{source.model}"


def _start_upload(client: RegistryClient, layer: Layer, model: ModelName, what: str) -> httpx.URL | None:
    """The upload location for layer, or None when the registry mounted it from another repository."""
    url = httpx.URL(client.uploads_url())
    source = _mount_source(layer, model)
    if source:
        url = url.copy_merge_params({"mount": layer.digest, "from": source})
    response, _ = client.retrying(lambda: client.request("POST", url, what, ok=(201, 202), content=b""))
    if response.status_code == 201 and source:
        return None
    location = response.headers.get("location") or response.headers.get("docker-upload-location")
    if not location:
        raise RegistryError(f"{what}: {client.host} started an upload without a Location")
    return client.resolve(response.url, location, what)


def _file_chunks(path: Path, offset: int, size: int, sent: Callable[[int], None], md5) -> Callable[[], Iterator[bytes]]:
    """A factory of fresh iterators over path[offset:offset+size] (a request may be resent)."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            left = size
            digest = hashlib.md5(usedforsecurity=False)
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise RegistryError(f"{path} shrank while it was being pushed")
                left -= len(chunk)
                digest.update(chunk)
                sent(len(chunk))
                yield chunk
            md5.append(digest.digest())

    return chunks


def _upload(client, location, path, layer, what, emit, cancel) -> int:
    """Upload path's bytes as layer's blob at location; return the bytes sent."""
    settings = client.settings
    chunk_size = settings.part_size(layer.size)
    offset = 0
    sent_total = 0
    part_md5s: list[bytes] = []
    redirected = False
    progress = {"done": 0, "shown": 0.0}

    def sent(n: int) -> None:
        progress["done"] += n
        now = time.monotonic()
        if now - progress["shown"] >= settings.progress_interval:
            progress["shown"] = now
            emit(_status(layer.digest, "pushing", layer.size, min(progress["done"], layer.size)))

    attempt = 0
    while offset < layer.size:
        _check_cancel(cancel, what)
        size = min(chunk_size, layer.size - offset)
        progress["done"] = offset
        md5s: list[bytes] = []
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + size - 1}",
            "Content-Length": str(size),
            "X-Redirect-Uploads": "1",  # Ollama's registry answers 307 to a signed URL
        }
        try:
            response = client.send("PATCH", location, what, headers=headers, content=_file_chunks(path, offset, size, sent, md5s), follow_redirects=False)
            try:
                if response.status_code == 307:
                    target = client.resolve(response.url, response.headers.get("location", ""), what)
                    response.close()
                    progress["done"] = offset  # the PATCH carried the bytes only to be redirected
                    response = client.send("PUT", target, what, headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, content=_file_chunks(path, offset, size, sent, md5s))
                    redirected = True
                    if response.status_code not in (200, 201):
                        raise client.fail(response, what)
                elif response.status_code in (202, 204):
                    new_location = response.headers.get("location")
                    if new_location:  # distribution's location carries the upload's state
                        location = client.resolve(response.url, new_location, what)
                else:
                    raise client.fail(response, what)
            finally:
                response.close()
        except TransientError as e:
            if attempt >= settings.retries:
                raise RegistryError(f"{e} (gave up after {attempt} retries)") from None
            if (cancel or threading.Event()).wait(settings.delay(attempt)):
                raise TransferCancelled(f"{what} cancelled") from None
            attempt += 1
            offset, location = _upload_offset(client, location, what, offset)
            continue
        attempt = 0
        part_md5s.extend(md5s[-1:])
        offset += size
        sent_total += size
    params = {"digest": layer.digest}
    if redirected:
        # Ollama's registry assembles the parts with S3; it checks the multipart ETag.
        params["etag"] = f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"
    final = httpx.URL(location).copy_merge_params(params)
    client.retrying(lambda: client.request("PUT", final, what, ok=(201, 204), content=b""), cancel)
    emit(_status(layer.digest, "pushing", layer.size, layer.size))
    return sent_total


def _upload_offset(client: RegistryClient, location, what: str, fallback: int) -> tuple[int, httpx.URL]:
    """Where an interrupted upload stands (the registry's Range "0-<last>"), and its location now.

    Without an answer, the chunk is sent again from fallback (where it started).
    """
    try:
        response, _ = client.request("GET", location, what, ok=(204,))
    except TransientError:
        return fallback, location
    if response.headers.get("location"):  # distribution's location carries the upload's state
        location = client.resolve(response.url, response.headers["location"], what)
    last = response.headers.get("range", "").rpartition("-")[2]
    # "0-0" means both "nothing" and "one byte" to distribution; the chunk's start is safe.
    if not last.isdigit() or last == "0":
        return fallback, location
    return int(last) + 1, location


# -- for the HTTP API ------------------------------------------------------------------------------
def stream_transfer(transfer: Callable[..., TransferResult], store: Store, name: str, **options) -> Iterator[dict[str, Any]]:
    """Run pull_model or push_model in a thread and yield its progress dicts as they come.

    What /api/pull and /api/push stream: the progress objects, ending with {"status":
    "success"} or with {"error": "<one line>"} when it fails. Closing the generator (the
    client went away) cancels the transfer; a pull keeps its partial files for a resume.
    """
    updates: queue.Queue = queue.Queue()
    cancel = threading.Event()
    done = object()

    def run() -> None:
        try:
            transfer(store, name, progress=updates.put, cancel=cancel, **options)
        except TransferCancelled:
            pass
        except (StoreError, OSError) as e:
            updates.put({"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the stream must end with a message, not hang
            updates.put({"error": f"{type(e).__name__}: {e}"})
        finally:
            updates.put(done)

    worker = threading.Thread(target=run, name=f"{transfer.__name__}-{name}", daemon=True)
    worker.start()
    try:
        while (update := updates.get()) is not done:
            yield update
    finally:
        cancel.set()
        worker.join(15)


async def transfer_events(transfer: Callable[..., TransferResult], store: Store, name: str, **options) -> AsyncIterator[dict[str, Any]]:
    """pull_model or push_model on a worker thread, its progress dicts as an async iterator.

    For an asyncio server: the transfer's exception (RegistryNotFound, RegistryError,
    another StoreError) is raised from the iterator where it happened, so an error before
    the first event can still get its HTTP status. Closing the iterator cancels the transfer.
    """
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def progress(update: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(updates.put_nowait, update)

    job = loop.run_in_executor(None, lambda: transfer(store, name, progress=progress, cancel=cancel, **options))
    try:
        while True:
            next_update = asyncio.ensure_future(updates.get())
            await asyncio.wait({next_update, job}, return_when=asyncio.FIRST_COMPLETED)
            if next_update.done():
                yield next_update.result()
                continue
            next_update.cancel()
            # Updates were queued before the job finished (call_soon_threadsafe keeps order).
            while not updates.empty():
                yield updates.get_nowait()
            job.result()
            return
    finally:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(job), 15)
