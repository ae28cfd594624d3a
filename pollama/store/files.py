"""The store's files on disk: atomic writes (temp file, fsync, rename, fsync of the directory),
temp files left by dead writers, and blob verification (sha256, cached by file identity).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from pollama.store.manifest import is_digest

log = logging.getLogger(__name__)

TEMP_PREFIX = ".pollama-tmp-"
STALE_TEMP_SECONDS = 3600  # a temp file untouched this long is abandoned, whoever wrote it
CHUNK = 1 << 20


# -- atomic files ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _temp_file(directory: Path) -> tuple[Path, BinaryIO]:
    """A new temp file in directory, named so that stores ignore it and can tell its writer."""
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        path = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")


def _commit(temp: Path, f: BinaryIO, dest: Path) -> None:
    """Make temp's bytes durable, then atomically give them dest's name."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.chmod(temp, 0o644)  # what Ollama gives blobs and manifests, whatever the umask did
    os.replace(temp, dest)
    _fsync_dir(dest.parent)


def atomic_write(dest: Path, data: bytes) -> None:
    """Write data to dest so that readers see the old file or all of data, never a part."""
    temp, f = _temp_file(dest.parent)
    try:
        with f:
            f.write(data)
            _commit(temp, f, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or we cannot tell: keep its file
    return True


def _is_stale_temp(path: Path) -> bool:
    """A temp file whose writer died, or that nobody has touched for an hour."""
    try:
        pid = int(path.name[len(TEMP_PREFIX) :].split("-", 1)[0])
        age = time.time() - path.lstat().st_mtime
    except (ValueError, OSError):
        return False
    return age > STALE_TEMP_SECONDS or not _pid_alive(pid)


def remove_stale_temp_files(top: Path) -> None:
    """Delete the temp files under top whose writers died or left them an hour ago."""
    if not top.is_dir():
        return
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = Path(dirpath) / name
            if name.startswith(TEMP_PREFIX) and _is_stale_temp(path):
                log.info("removing %s, left by an interrupted write", path)
                path.unlink(missing_ok=True)


# -- blob verification -------------------------------------------------------------------------
class BlobVerifier:
    """Checks that a blob's bytes hash to its digest, remembering files already checked.

    Hashing a 40 GB model at each load would cost tens of seconds, so a blob that was hashed
    (or written by this store) is remembered by (path, size, mtime_ns, inode, device) and not
    hashed again while those are unchanged. Any rewrite, truncation, append or rename in
    place changes one of them. What this does not catch is a deliberate edit that restores
    the mtime: the check guards against broken downloads, disks and tools, not against
    someone who can write the store (and could rewrite the manifests just as well).

    The memory is kept in this process and, when cache_file is given, for blobs of at least
    PERSIST_BYTES also in a small JSON file outside the store, so that separate processes
    (CLI runs) profit too; small blobs are cheaper to hash than to record.
    """

    PERSIST_BYTES = 16 << 20

    def __init__(self, cache_file: Path | None):
        self.cache_file = cache_file
        self._known: dict[str, tuple[int, int, int, int, str]] = {}
        self._lock = threading.Lock()
        self._loaded = False

    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def _read_file(self) -> dict[str, tuple[int, int, int, int, str]]:
        if self.cache_file is None:
            return {}
        try:
            entries = json.loads(self.cache_file.read_text())
            return {
                path: tuple(entry)  # type: ignore[misc]
                for path, entry in entries.items()
                if isinstance(entry, list) and len(entry) == 5 and is_digest(entry[4])
            }
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            return {}  # no cache or a broken one: it is only a cache

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._known.update(self._read_file())

    def _save(self) -> None:
        if self.cache_file is None:
            return
        # Merge with what other processes recorded meanwhile; forget files that are gone,
        # so the cache does not grow with every model ever seen.
        entries = self._read_file()
        entries.update((p, e) for p, e in self._known.items() if e[0] >= self.PERSIST_BYTES)
        entries = {p: list(e) for p, e in entries.items() if os.path.exists(p)}
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_file, json.dumps(entries).encode())
        except OSError as e:
            log.debug("could not save the blob hash cache %s: %s", self.cache_file, e)

    def is_known(self, path: Path, digest: str) -> bool:
        """Whether path was already found to hash to digest and has not changed since."""
        try:
            st = path.stat()
        except OSError:
            return False
        with self._lock:
            self._load()
            entry = self._known.get(os.path.abspath(path))
        return entry is not None and entry == (*self._identity(st), digest)

    def remember(self, path: Path, digest: str) -> None:
        """Record that path, as it is now, hashes to digest."""
        try:
            st = path.stat()
        except OSError:
            return
        with self._lock:
            self._load()
            self._known[os.path.abspath(path)] = (*self._identity(st), digest)
            if st.st_size >= self.PERSIST_BYTES:
                self._save()

    def forget(self, path: Path) -> None:
        """Drop what is known of path (it is being deleted)."""
        with self._lock:
            self._load()
            entry = self._known.pop(os.path.abspath(path), None)
            if entry is not None and entry[0] >= self.PERSIST_BYTES:
                self._save()


def sha256_file(path: Path) -> str:
    """The "sha256:<hex>" digest of a file's bytes."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return "sha256:" + h.hexdigest()
