"""Interrupted pulls resume: only the missing byte ranges are downloaded again.

A throttling proxy in front of the real registry counts the blob bytes it forwards, so the
tests see exactly what went over the wire.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from registry.conftest import free_port

from pollama.store.registry import TransferCancelled, TransferSettings, pull_model
from pollama.store.store import Store

REPO = Path(__file__).resolve().parents[2]
PARTS = TransferSettings(min_part_size=1 << 20, max_part_size=8 << 20, max_parallel=4, backoff=0.05, stall_timeout=10)


class CountingProxy(ThreadingHTTPServer):
    """Forwards GETs to the registry, counting (and optionally slowing) the bytes per path."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = upstream
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.delay = 0.0  # seconds slept per 64 KiB forwarded
        self.lock = threading.Lock()
        self.bytes: dict[str, int] = {}
        self.ranges: dict[str, list[str]] = {}
        self.generation = 0  # requests of an earlier generation (a killed pull's) are not counted

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.bytes.clear()
            self.ranges.clear()


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        proxy: CountingProxy = self.server  # type: ignore[assignment]
        path = self.path.split("?")[0]
        with proxy.lock:
            generation = proxy.generation
            proxy.ranges.setdefault(path, []).append(self.headers.get("Range", ""))
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, headers=headers)
        response = upstream.getresponse()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            while chunk := response.read(65536):
                self.wfile.write(chunk)
                with proxy.lock:
                    if generation == proxy.generation:
                        proxy.bytes[path] = proxy.bytes.get(path, 0) + len(chunk)
                if proxy.delay:
                    time.sleep(proxy.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            upstream.close()

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def published(registry, smollm2_store):
    """SmolLM2 on the registry as test/resume:latest; returns its manifest."""
    from pollama.store.registry import push_model

    name = f"{registry.host}/test/resume:latest"
    smollm2_store.copy("smollm2", name)
    push_model(smollm2_store, name, insecure=True, settings=PARTS)
    return smollm2_store.read_manifest(name)


@pytest.fixture
def proxy(registry):
    server = CountingProxy(registry.host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def model_layer(manifest):
    return manifest.layers_of("application/vnd.ollama.image.model")[0]


def descriptors(blobs: Path, digest: str) -> list[dict]:
    found = []
    for path in blobs.glob(f"sha256-{digest[7:]}-partial-*"):
        try:
            found.append(json.loads(path.read_bytes()))
        except (ValueError, OSError):
            pass  # being replaced this instant
    return found


def test_pull_killed_mid_download_resumes_with_only_the_missing_ranges(published, proxy, tmp_path):
    layer = model_layer(published)
    root = tmp_path / "models"
    blobs = root / "blobs"
    name = f"{proxy.host}/test/resume:latest"
    proxy.delay = 0.02  # about 3 MB/s per connection: slow enough to be killed halfway
    script = (
        "import sys\n"
        "from pollama.store.store import Store\n"
        "from pollama.store.registry import pull_model, TransferSettings\n"
        "settings = TransferSettings(min_part_size=1 << 20, max_part_size=8 << 20, max_parallel=4, backoff=0.05)\n"
        "pull_model(Store(sys.argv[1], hash_cache=None), sys.argv[2], insecure=True, settings=settings)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(root), name], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while sum(d["Completed"] for d in descriptors(blobs, layer.digest)) < 8 << 20:
            assert child.poll() is None, "the pull finished before it could be killed: slow the proxy down"
            assert time.monotonic() < deadline, "the pull made no progress"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    parts = descriptors(blobs, layer.digest)
    assert (blobs / f"sha256-{layer.digest[7:]}-partial").stat().st_size == layer.size  # Ollama's sparse file
    assert sum(p["Size"] for p in parts) == layer.size  # the parts tile the blob
    on_disk = sum(p["Completed"] for p in parts)
    assert 0 < on_disk < layer.size
    assert not (blobs / f"sha256-{layer.digest[7:]}").exists()  # nothing visible before verification
    assert not (root / "manifests").exists()

    proxy.delay = 0.0
    proxy.reset()
    result = pull_model(Store(root, hash_cache=None), name, insecure=True, settings=PARTS)
    blob_path = f"/v2/test/resume/blobs/{layer.digest}"
    # Every missing byte once, nothing that was on disk, plus the 1-byte probe for the blob's URL.
    assert proxy.bytes[blob_path] == layer.size - on_disk + 1
    wanted = {f"bytes={p['Offset'] + p['Completed']}-{p['Offset'] + p['Size'] - 1}" for p in parts if p["Completed"] < p["Size"]}
    assert set(proxy.ranges[blob_path]) == wanted | {"bytes=0-0"}
    assert result.manifest.digest == published.digest
    store = Store(root, hash_cache=None)
    assert store.verify_blob(layer) == blobs / f"sha256-{layer.digest[7:]}"
    assert not list(blobs.glob("*-partial*"))


def test_cancelled_pull_keeps_its_parts_and_resumes(published, proxy, tmp_path):
    layer = model_layer(published)
    root = tmp_path / "models"
    name = f"{proxy.host}/test/resume:latest"
    cancel = threading.Event()
    proxy.delay = 0.005

    def stop_after_some_bytes(update):
        if update.get("digest") == layer.digest and update["completed"] > 4 << 20:
            cancel.set()

    with pytest.raises(TransferCancelled, match="cancelled"):
        pull_model(Store(root, hash_cache=None), name, insecure=True, progress=stop_after_some_bytes, cancel=cancel, settings=PARTS)
    on_disk = sum(p["Completed"] for p in descriptors(root / "blobs", layer.digest))
    assert on_disk > 4 << 20 and not (root / "manifests").exists()

    proxy.delay = 0.0
    proxy.reset()
    result = pull_model(Store(root, hash_cache=None), name, insecure=True, settings=PARTS)
    assert proxy.bytes[f"/v2/test/resume/blobs/{layer.digest}"] == layer.size - on_disk + 1
    assert result.manifest.digest == published.digest


def test_concurrent_pulls_of_one_blob_share_one_download(published, proxy, tmp_path):
    layer = model_layer(published)
    root = tmp_path / "models"
    store = Store(root, hash_cache=None)
    proxy.delay = 0.002
    results, errors = [], []

    def pull(tag_name):
        try:
            results.append(pull_model(store, tag_name, insecure=True, settings=PARTS))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(f"{proxy.host}/test/resume:latest",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3
    blob_bytes = proxy.bytes[f"/v2/test/resume/blobs/{layer.digest}"]
    assert blob_bytes <= layer.size + 3  # one download (and at most a probe per caller)
    assert store.verify_blob(layer)
    assert not list((root / "blobs").glob("*-partial*"))


def test_two_processes_pulling_one_blob_download_it_once(published, proxy, tmp_path):
    """The second process waits on the first one's lock on the -partial file, then uses its blob."""
    layer = model_layer(published)
    root = tmp_path / "models"
    name = f"{proxy.host}/test/resume:latest"
    proxy.delay = 0.003
    script = (
        "import sys\n"
        "from pollama.store.store import Store\n"
        "from pollama.store.registry import pull_model, TransferSettings\n"
        "settings = TransferSettings(min_part_size=1 << 20, max_part_size=8 << 20, max_parallel=4, backoff=0.05)\n"
        "pull_model(Store(sys.argv[1], hash_cache=None), sys.argv[2], insecure=True, settings=settings)\n"
    )
    children = [subprocess.Popen([sys.executable, "-c", script, str(root), name], cwd=REPO) for _ in range(2)]
    for child in children:
        assert child.wait(180) == 0
    assert proxy.bytes[f"/v2/test/resume/blobs/{layer.digest}"] <= layer.size + 2  # once, plus the probes
    assert Store(root, hash_cache=None).verify_blob(layer)
    assert not list((root / "blobs").glob("*-partial*"))


def test_ctrl_c_in_the_cli_keeps_the_download_for_the_next_run(published, proxy, tmp_path):
    """`pollama pull` interrupted with Ctrl+C exits 130 saying how to resume; the next run resumes.
    No server answers, so the pull runs in the server the command starts in its own process."""
    layer = model_layer(published)
    root = tmp_path / "models"
    blobs = root / "blobs"
    name = f"{proxy.host}/test/resume:latest"
    proxy.delay = 0.02
    env = {**os.environ, "OLLAMA_MODELS": str(root), "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    child = subprocess.Popen([sys.executable, "-m", "pollama.cli.main", "pull", name, "--insecure"], cwd=REPO, env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while sum(d["Completed"] for d in descriptors(blobs, layer.digest)) < 4 << 20:
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the pull made no progress"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        assert child.wait(30) == 130
        assert "interrupted: run the same command again to resume" in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    on_disk = sum(d["Completed"] for d in descriptors(blobs, layer.digest))
    assert on_disk >= 4 << 20

    proxy.delay = 0.0
    proxy.reset()
    pull_model(Store(root, hash_cache=None), name, insecure=True, settings=PARTS)
    assert proxy.bytes[f"/v2/test/resume/blobs/{layer.digest}"] == layer.size - on_disk + 1
