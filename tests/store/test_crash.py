"""A writer killed with SIGKILL mid-write leaves no visible blob or manifest, only ignored temps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pollama.store.errors import ModelNotFound
from pollama.store.files import STALE_TEMP_SECONDS, TEMP_PREFIX
from pollama.store.store import Store

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# Streams 1 MiB chunks; after 32 MiB it tells the parent and hangs inside read(), mid-write.
CHILD_BLOB = r"""
import sys, time
from pollama.store.store import Store

class Endless:
    chunks = 0
    def read(self, n=-1):
        self.chunks += 1
        if self.chunks == 33:
            print("writing", flush=True)
            time.sleep(600)
        return b"x" * (1 << 20)

Store(sys.argv[1], hash_cache=None).write_blob(Endless())
"""

# Writes a model's blobs, then hangs just before the manifest's rename: the temp is complete.
CHILD_MANIFEST = r"""
import os, sys, time
from pollama.store.store import Store
from pollama.store.manifest import MediaType

store = Store(sys.argv[1], hash_cache=None)
layer = store.add_layer(b"GGUF" + bytes(100), MediaType.MODEL)
real_replace = os.replace

def hang_before_manifest(src, dst):
    if "manifests" in str(dst):
        print("renaming", flush=True)
        time.sleep(600)
    return real_replace(src, dst)

os.replace = hang_before_manifest
store.write_manifest("victim", {"model_format": "gguf"}, [layer])
"""


def run_and_kill(script: str, root, ready: bytes) -> None:
    """Run script in a child, wait for its ready line, SIGKILL it and reap it."""
    repo = str(Path(__file__).resolve().parents[2])  # so the child imports this checkout's pollama
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == ready
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def temp_files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith(TEMP_PREFIX)]


def test_sigkill_while_writing_a_large_blob(tmp_path):
    root = tmp_path / "models"
    run_and_kill(CHILD_BLOB, root, b"writing\n")
    names = os.listdir(root / "blobs")
    assert names and all(n.startswith(TEMP_PREFIX) for n in names)  # no sha256-* blob appeared
    assert os.path.getsize(root / "blobs" / names[0]) >= 32 << 20  # it really was mid-write
    store = Store(root, hash_cache=None)  # opening cleans what the dead writer left
    assert os.listdir(root / "blobs") == []
    assert store.list() == []


def test_sigkill_before_a_manifest_is_renamed(tmp_path):
    root = tmp_path / "models"
    observer = Store(root, hash_cache=None)  # opened before the crash: it has not cleaned up
    run_and_kill(CHILD_MANIFEST, root, b"renaming\n")
    assert len(temp_files(root / "manifests")) == 1
    assert observer.list() == []  # the temp beside where the manifest would go is ignored
    assert not observer.exists("victim")
    with pytest.raises(ModelNotFound):
        observer.read_manifest("victim")
    Store(root, hash_cache=None)
    assert temp_files(root) == []


def test_temp_files_of_live_writers_are_kept(tmp_path):
    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    mine = root / "blobs" / f"{TEMP_PREFIX}{os.getpid()}-abc"  # this process is alive
    mine.write_bytes(b"in progress")
    Store(root, hash_cache=None)
    assert mine.exists()
    old = time.time() - STALE_TEMP_SECONDS - 60  # untouched for over an hour: abandoned
    os.utime(mine, (old, old))
    Store(root, hash_cache=None)
    assert not mine.exists()
    unrelated = root / "blobs" / "notes.txt"  # not ours: left alone
    unrelated.write_text("x")
    Store(root, hash_cache=None)
    assert unrelated.exists()
