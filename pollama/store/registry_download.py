"""Blob downloads: parallel ranged parts, retries, stall restarts, resume, one download per blob.

On disk, as Ollama keeps them (so either program resumes the other's download):

    blobs/sha256-<hex>-partial      the blob's bytes so far (a sparse file of the full size)
    blobs/sha256-<hex>-partial-<N>  {"N":..,"Offset":..,"Size":..,"Completed":..} per part

A part's descriptor is saved after its bytes were written and fsynced, so after a crash or
Ctrl+C the next pull asks only for the bytes after each part's Completed. The blob becomes
visible (is renamed to sha256-<hex>) only once the whole file hashes to its digest.

Concurrent pulls of the same blob in this process share one BlobDownload; between processes
an flock on the -partial file makes the second one wait for the first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from pollama.store.errors import DigestMismatch
from pollama.store.registry_client import (
    RegistryClient,
    RegistryError,
    TransferCancelled,
    TransferSettings,
    TransientError,
)
from pollama.store.store import Store

try:
    import fcntl
except ImportError:  # Windows: no lock between processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DESCRIPTOR_SAVE_SECONDS = 1.0  # how much download a crash may cost, per part


class UntrustedBytes(RegistryError):
    """The server sent bytes other than those asked for: what was saved cannot be resumed from."""


class ExpiredURL(TransientError):
    """A CDN refused the direct URL (signed URLs expire): ask the registry for a new one."""


@dataclass
class Part:
    """One byte range of a blob: [offset, offset + size), of which completed bytes are on disk."""

    n: int
    offset: int
    size: int
    completed: int = 0

    def to_json(self) -> bytes:
        # Go's json.Marshal of Ollama's part struct: field names as declared, no newline.
        return json.dumps({"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Part | None:
        try:
            obj = json.loads(data)
            values = [obj[k] for k in ("N", "Offset", "Size", "Completed")]
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if not all(type(v) is int and v >= 0 for v in values) or values[3] > values[2]:
            return None
        return cls(*values)


def _layout(total: int, part_size: int) -> list[Part]:
    return [Part(i, offset, min(part_size, total - offset)) for i, offset in enumerate(range(0, total, part_size))]


class BlobDownload:
    """The download of one blob into one store, shared by every caller that needs it."""

    def __init__(self, store: Store, digest: str, total: int, key: tuple[str, str], settings: TransferSettings):
        self.store = store
        self.settings = settings
        self.digest = digest
        self.total = total
        self.key = key
        self.partial = store.partial_blob_path(digest)  # digest was checked by blob_path
        self.parts: list[Part] = []
        self.completed = 0
        self.transferred = 0  # bytes actually received in this process (resume tests count them)
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.cancel = threading.Event()
        self.references = 0
        self._lock = threading.Lock()
        self._verified: Path | None = None
        self.already_present = False  # the blob was in the store (or another process made it)

    def descriptor_path(self, n: int) -> Path:
        return self.partial.with_name(f"{self.partial.name}-{n}")

    # -- run ----------------------------------------------------------------------------------
    def run(self, client: RegistryClient) -> None:
        """Download every missing byte (in its own thread); errors are kept for the callers."""
        try:
            fd = self._open_locked()
            if fd is None:
                self.completed, self.already_present = self.total, True
                return
            try:
                self._prepare(fd)
                self._download_parts(client, fd)
                os.fsync(fd)
            except BaseException as e:
                # Keep a partial download to resume from, unless it holds nothing or bytes
                # that cannot be trusted (deleted while the lock is still held).
                if isinstance(e, UntrustedBytes) or self.completed == 0:
                    self.discard()
                raise
            finally:
                os.close(fd)  # also releases the flock
        except BaseException as e:  # noqa: BLE001 - kept for every caller waiting on this download
            self.error = e
        finally:
            self.finished.set()

    def _open_locked(self) -> int | None:
        """The -partial file, opened and locked against other processes; None if the blob exists."""
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if self.store.blob_path(self.digest).is_file():
                return None
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
            try:
                self._lock_between_processes(fd)
                if self.store.blob_path(self.digest).is_file():  # another process finished it
                    os.close(fd)
                    return None
                try:
                    current = os.stat(self.partial).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                return fd
            os.close(fd)  # the file was committed or replaced while we waited: look again

    def _lock_between_processes(self, fd: int) -> None:
        if fcntl is None:
            return
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                log.info("waiting for another process downloading %s", self.digest)
                if self.cancel.wait(0.5):
                    raise TransferCancelled(f"pull of {self.digest} cancelled") from None

    def _prepare(self, fd: int) -> None:
        """Resume from the part descriptors on disk when they fit this blob, else start over."""
        parts = self._load_descriptors()
        size = os.fstat(fd).st_size
        if parts is None or size != self.total:
            parts = _layout(self.total, self.settings.part_size(self.total))
            self._check_disk_space()
            os.ftruncate(fd, 0)  # what was there is unknown: start from nothing
            os.ftruncate(fd, self.total)
            for stale in self.partial.parent.glob(self.partial.name + "-*"):
                stale.unlink(missing_ok=True)
            for part in parts:
                self._save(part)
        else:
            log.info("resuming download of %s: %d of %d bytes on disk", self.digest, sum(p.completed for p in parts), self.total)
        self.parts = parts
        self.completed = sum(p.completed for p in parts)

    def _load_descriptors(self) -> list[Part] | None:
        parts = []
        for path in self.partial.parent.glob(self.partial.name + "-*"):
            suffix = path.name[len(self.partial.name) + 1 :]
            if not suffix.isdigit():
                continue
            try:
                with open(path, "rb") as f:
                    part = Part.from_json(f.read(4096))
            except OSError:
                return None
            if part is None or part.n != int(suffix):
                return None
            parts.append(part)
        parts.sort(key=lambda p: p.offset)
        offset = 0
        for part in parts:  # the parts must tile the blob exactly
            if part.offset != offset or part.size == 0:
                return None
            offset += part.size
        return parts if parts and offset == self.total else None

    def _check_disk_space(self) -> None:
        free = shutil.disk_usage(self.partial.parent).free
        if self.total > free:
            raise RegistryError(
                f"not enough disk space in {self.store.blobs_dir} for blob {self.digest}: "
                f"it needs {self.total} bytes, {free} are free"
            )

    def _save(self, part: Part) -> None:
        # temp + rename: a crash leaves the old descriptor or the new one, never half a one.
        path = self.descriptor_path(part.n)
        temp = path.with_name(path.name + ".tmp")
        with open(temp, "wb") as f:
            f.write(part.to_json())
        os.replace(temp, path)

    def _download_parts(self, client: RegistryClient, fd: int) -> None:
        todo = [p for p in self.parts if p.completed < p.size]
        if not todo:
            return
        settings = client.settings
        url = self._direct_url(client)
        with ThreadPoolExecutor(max_workers=min(settings.max_parallel, len(todo)), thread_name_prefix="pull-part") as pool:
            futures = [pool.submit(self._download_part, client, fd, part, url) for part in todo]
            first_error = None
            for future in futures:
                try:
                    future.result()
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the other parts stop
                    # Stop the other parts; they save their progress on the way out.
                    self.cancel.set()
                    first_error = first_error or e
        if first_error is not None:
            raise first_error
        if self.cancel.is_set():
            raise TransferCancelled(f"pull of {self.digest} cancelled")

    def _direct_url(self, client: RegistryClient) -> httpx.URL:
        """The URL the registry redirects this blob to (a CDN), found once, not per part."""
        what = f"blob {self.digest}"
        for attempt in range(client.settings.retries + 1):
            try:
                response = client.send("GET", client.blob_url(self.digest), what, headers={"Range": "bytes=0-0"})
                try:
                    if response.status_code not in (200, 206):
                        raise client.fail(response, what)
                    announced = _content_range_total(response)
                    if announced is not None and announced != self.total:
                        raise UntrustedBytes(f"{what}: the registry says it has {announced} bytes, the manifest says {self.total}")
                    return response.url
                finally:
                    response.close()
            except TransientError as e:
                if attempt == client.settings.retries or self.cancel.wait(client.settings.delay(attempt)):
                    raise
                log.info("%s; retrying", e)
        raise AssertionError("unreachable")

    def _download_part(self, client: RegistryClient, fd: int, part: Part, url: httpx.URL) -> None:
        settings = client.settings
        what = f"blob {self.digest} part {part.n}"
        attempt = 0
        while part.completed < part.size:
            if self.cancel.is_set():
                self._save(part)
                return
            before = part.completed
            try:
                self._receive(client, fd, part, url, what)
            except ExpiredURL as e:
                if attempt >= settings.retries:
                    raise RegistryError(f"{e} (gave up after {settings.retries} retries)") from None
                log.info("%s; asking the registry for a new one", e)
                url = self._direct_url(client)
                attempt += 1
            except TransientError as e:
                self._save_synced(fd, part)
                if part.completed > before:
                    attempt = 0  # progress was made: the budget is for consecutive failures
                if attempt >= settings.retries:
                    raise RegistryError(f"{e} (gave up after {settings.retries} retries)") from None
                log.info("%s; retrying in %.1fs", e, settings.delay(attempt))
                if self.cancel.wait(settings.delay(attempt)):
                    return
                attempt += 1
            except BaseException:
                self._save_synced(fd, part)
                raise
        self._save_synced(fd, part)

    def _receive(self, client: RegistryClient, fd: int, part: Part, url: httpx.URL, what: str) -> None:
        start, end = part.offset + part.completed, part.offset + part.size - 1
        whole = start == 0 and end == self.total - 1
        response = client.send("GET", url, what, headers={"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"})
        with client.receiving(response, what):
            if response.status_code == 200 and not whole:
                raise UntrustedBytes(f"{what}: the server ignored the byte range asked for (answered 200, not 206)")
            if response.status_code in (401, 403, 404, 410) and not client.is_registry(url):
                response.close()
                raise ExpiredURL(f"{what}: {url.host} answered {response.status_code} for the blob's direct URL")
            if response.status_code not in (200, 206):
                raise client.fail(response, what)
            if response.status_code == 206 and _content_range_start(response) not in (None, start):
                raise UntrustedBytes(f"{what}: the server sent another byte range than asked for")
            last_save = time.monotonic()
            position = start
            for chunk in response.iter_bytes():
                if self.cancel.is_set():
                    return
                if position + len(chunk) > end + 1:
                    raise UntrustedBytes(f"{what}: the server sent more bytes than the {self.total} the blob has")
                self._write_at(fd, chunk, position)
                position += len(chunk)
                with self._lock:
                    part.completed += len(chunk)
                    self.completed += len(chunk)
                    self.transferred += len(chunk)
                if time.monotonic() - last_save >= DESCRIPTOR_SAVE_SECONDS:
                    self._save_synced(fd, part)
                    last_save = time.monotonic()
        if part.completed < part.size:
            raise TransientError(f"{what}: the connection ended after {part.completed} of {part.size} bytes")

    def _write_at(self, fd: int, data: bytes, position: int) -> None:
        if hasattr(os, "pwrite"):
            os.pwrite(fd, data, position)
            return
        with self._lock:  # Windows has no pwrite: seek and write must not interleave
            os.lseek(fd, position, os.SEEK_SET)
            os.write(fd, data)

    def _save_synced(self, fd: int, part: Part) -> None:
        os.fsync(fd)  # the bytes first, so a descriptor never claims bytes that are not on disk
        self._save(part)

    # -- after the bytes ----------------------------------------------------------------------
    def verify(self) -> Path:
        """Hash the download and make it the blob (once, whoever asks first)."""
        # One lock for all blobs: two downloads of one blob (a second caller that came after
        # the first finished) must not both rename the same partial file.
        with _commit_lock:
            if self._verified is None:
                blob = self.store.blob_path(self.digest)
                if self.already_present or (blob.is_file() and not self.partial.exists()):
                    self._verified = blob
                else:
                    try:
                        self._verified = self._commit()
                    except DigestMismatch as e:
                        self.discard()
                        raise DigestMismatch(f"blob {self.digest}: {e}") from None
                    except FileNotFoundError:
                        if not blob.is_file():
                            raise
                        self._verified = blob  # another process verified and committed it first
                    self._remove_descriptors()
            return self._verified

    def _commit(self) -> Path:
        # Under the file's lock, so another process never starts on a file being renamed.
        fd = os.open(self.partial, os.O_RDONLY)
        try:
            self._lock_between_processes(fd)
            return self.store.commit_partial_blob(self.partial, self.digest)
        finally:
            os.close(fd)

    def _remove_descriptors(self) -> None:
        for path in self.partial.parent.glob(self.partial.name + "-*"):
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Delete the partial file and its descriptors."""
        self.partial.unlink(missing_ok=True)
        self._remove_descriptors()


_downloads: dict[tuple[str, str], BlobDownload] = {}
_downloads_lock = threading.Lock()
_commit_lock = threading.Lock()


def download_blob(
    store: Store,
    client: RegistryClient,
    digest: str,
    total: int,
    on_progress: Callable[[int], None],
    cancel: threading.Event | None,
) -> BlobDownload:
    """Download blob digest into store (joining a download already running); return it.

    on_progress gets the bytes completed; the caller verifies with .verify() afterwards.
    Cancelling stops the download only when no other caller still waits for it.
    """
    key = (os.path.abspath(store.blobs_dir), digest)
    with _downloads_lock:
        job = _downloads.get(key)
        if job is None or job.finished.is_set():
            job = BlobDownload(store, digest, total, key, client.settings)
            _downloads[key] = job
            threading.Thread(target=_run_and_forget, args=(job, client), name=f"pull-{digest[7:19]}", daemon=True).start()
        job.references += 1
    interval = client.settings.progress_interval
    shown = -1
    try:
        while not job.finished.wait(interval):
            if cancel is not None and cancel.is_set():
                raise TransferCancelled(f"pull of {digest} cancelled")
            if job.completed != shown:
                shown = job.completed
                on_progress(shown)
    except BaseException:
        with _downloads_lock:
            job.references -= 1
            if job.references == 0:
                job.cancel.set()
        job.finished.wait(10)  # let the parts save where they got to
        raise
    with _downloads_lock:
        job.references -= 1
    if job.error is not None:
        raise job.error
    on_progress(job.completed)
    return job


def _run_and_forget(job: BlobDownload, client: RegistryClient) -> None:
    try:
        job.run(client)
    finally:
        with _downloads_lock:
            if _downloads.get(job.key) is job:
                del _downloads[job.key]


def _content_range_total(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    total = value.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _content_range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    if not value.startswith("bytes "):
        return None
    start = value[6:].partition("-")[0]
    return int(start) if start.isdigit() else None
