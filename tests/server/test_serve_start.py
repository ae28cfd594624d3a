"""What `pollama serve` does as it starts and serves, as Ollama's server does: it prunes the store
(server/routes.go Serve -> server/images.go PruneLayers, manifest.PruneDirectory) unless
OLLAMA_NOPRUNE is set, and logs on stderr a slog-style "Listening on" line and one gin-style
line per request (gin's default logger: [GIN] time | status | latency | client | method "path")."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pollama.store.manifest import MediaType
from pollama.store.store import Store

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def make_store(root: Path) -> dict[str, Path]:
    """A store with one model, blobs no manifest references (an old one and a young one), a stale
    `-partial` download and an empty manifest folder left by a removed model."""
    store = Store(root, hash_cache=None)
    layer = store.add_layer(b"the model's weights", MediaType.MODEL)
    manifest = store.write_manifest("kept", {"model_format": "gguf"}, [layer])
    files = {
        "model": store.blob_path(layer.digest),
        "config": store.blob_path(manifest.config.digest),
        "old unused": store.blob_path(store.write_blob(b"a blob nothing uses, from long ago")),
        "young unused": store.blob_path(store.write_blob(b"a blob a create under way just wrote")),
        "stale partial": store.blobs_dir / ("sha256-" + "ab" * 32 + "-partial"),
    }
    files["stale partial"].write_bytes(b"half a download")
    for name, path in files.items():  # Ollama keeps anything touched within the hour
        _age(path, 0 if name == "young unused" else 2 * HOUR)
    empty = store.manifests_dir / "registry.ollama.ai" / "library" / "gone"
    empty.mkdir(parents=True)
    files["empty folder"] = empty
    return files


def test_serve_prunes_unused_blobs_at_start_and_logs_like_ollama(server_factory, tmp_path):
    files = make_store(tmp_path / "store")
    server = server_factory(split_logs=True, OLLAMA_MODELS=str(tmp_path / "store"))
    gone = {name for name, path in files.items() if not path.exists()}
    assert gone == {"old unused", "stale partial", "empty folder"}
    with server.http() as http:
        assert http.get("/api/version").status_code == 200
        assert http.get("/api/nope").status_code == 404
        assert [m["name"] for m in http.get("/api/tags").json()["models"]] == ["kept:latest"]

    err = (server.folder / "server.err").read_text()
    assert (server.folder / "server.log").read_text() == ""  # every log line on stderr
    port = server.host.rsplit(":", 1)[1]
    assert re.search(r'^time=\S+ level=INFO source=\S+:\d+ msg="Listening on 127\.0\.0\.1:' + port
                     + r' \(version 0\.32\.15\)"$', err, re.M), err
    assert re.search(r'^time=\S+ level=INFO source=\S+ msg="total unused blobs removed: 1"$', err, re.M), err

    def gin(status: int, method: str, path: str) -> str:
        return (r"^\[GIN\] \d\d\d\d/\d\d/\d\d - \d\d:\d\d:\d\d \| " + str(status) + r" \| +[0-9.]+(ns|µs|ms|s) \| +127\.0\.0\.1 \| "
                + method + r' +"' + path + '"$')

    assert re.search(gin(200, "GET", "/api/version"), err, re.M), err
    assert re.search(gin(404, "GET", "/api/nope"), err, re.M), err
    line = next(line for line in err.splitlines() if '"/api/version"' in line)
    assert line.index("| 200 |") == len("[GIN] 2026/12/08 - 01:30:46 ")  # gin's columns: %3d, %13v, %15s, %-7s
    assert re.search(r"\| [ 0-9.µnms]{13} \| {7}127\.0\.0\.1 \| GET     \"", line), line


def test_serve_keeps_every_blob_with_noprune(server_factory, tmp_path):
    files = make_store(tmp_path / "store")
    server_factory(split_logs=True, OLLAMA_MODELS=str(tmp_path / "store"), OLLAMA_NOPRUNE="1")
    assert all(path.exists() for path in files.values())


# Go's time.Duration.String() on the cases of Go's own src/time/time_test.go (durationTests).
GO_DURATIONS = [(0, "0s"), (1, "1ns"), (1100, "1.1µs"), (2_200_000, "2.2ms"), (3_300_000_000, "3.3s"),
                ((4 * 60 + 5) * 10**9, "4m5s"), (4 * 60 * 10**9 + 5_001_000_000, "4m5.001s"),
                ((5 * 3600 + 6 * 60) * 10**9 + 7_001_000_000, "5h6m7.001s"), (8 * 60 * 10**9 + 1, "8m0.000000001s")]


def test_request_latency_is_written_as_go_writes_a_duration():
    from pollama.server.logs import go_duration

    assert [go_duration(ns) for ns, _ in GO_DURATIONS] == [text for _, text in GO_DURATIONS]
