"""A real registry (Debian's docker-registry, the CNCF distribution registry) for the tests.

Each fixture starts one on a free loopback port with its own storage folder and stops it at
teardown. Tests skip, saying how to install it, when the binary is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pollama.store.registry import TransferSettings
from pollama.store.store import Store

REGISTRY_BINARY = shutil.which("docker-registry") or shutil.which("registry")
INSTALL = "apt-get install -y docker-registry"
# Small parts so SmolLM2 (94 MiB) is fetched in many parallel ranges; quick retries.
SETTINGS = TransferSettings(min_part_size=1 << 20, max_part_size=8 << 20, backoff=0.05, stall_timeout=5.0, connect_timeout=5.0)


@pytest.fixture
def settings() -> TransferSettings:
    return SETTINGS


@pytest.fixture(autouse=True)
def _private_env(tmp_path, monkeypatch):
    monkeypatch.setenv("POLLAMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "env-models"))
    monkeypatch.delenv("POLLAMA_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("POLLAMA_REGISTRY_PASSWORD", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningRegistry:
    """A registry process at host (127.0.0.1:<port>)."""

    def __init__(self, folder: Path, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None):
        if REGISTRY_BINARY is None:
            pytest.skip(f"the docker-registry binary is not installed ({INSTALL})")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.folder = folder
        (folder / "storage").mkdir(parents=True)
        auth = ""
        if htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: pollama-test\n    path: {htpasswd}\n"
        tls_config = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: pollama-test-secret\n" + tls_config + auth
        )
        self.log = open(folder / "registry.log", "wb")  # noqa: SIM115 - open while the registry runs
        self.process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(folder / 'registry.log').read_text()[-2000:]}")
            try:
                httpx.get(f"{'https' if tls else 'http'}://{self.host}/v2/", timeout=1, verify=False)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("docker-registry did not start within 20 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    running = RunningRegistry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the registry accepts only bcrypt)."""
    tool = shutil.which("htpasswd")
    if tool:
        return subprocess.run([tool, "-nbB", user, password], check=True, capture_output=True, text=True).stdout.strip()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's libxcrypt makes bcrypt hashes

    # Cost 5, as `htpasswd -B` makes: the registry checks the hash on every request, and
    # crypt's default cost (12) makes parallel part downloads crawl.
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("no way to make a bcrypt htpasswd entry (apt-get install -y apache2-utils)")
    return f"{user}:{hashed}"


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth-registry")
    if REGISTRY_BINARY is None:
        pytest.skip(f"the docker-registry binary is not installed ({INSTALL})")
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "s3cret") + "\n")
    running = RunningRegistry(folder, htpasswd)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def smollm2_store(tmp_path_factory):
    """A store holding SmolLM2 as 'smollm2:latest' (created from the PyPI GGUF)."""
    from realmodels import real_model

    from pollama.create.pipeline import create_model

    gguf = real_model("smollm2")
    root = tmp_path_factory.mktemp("source-store")
    store = Store(root / "models", hash_cache=None)
    create_model(store, "smollm2", f"FROM {gguf}\nPARAMETER temperature 0\n", root)
    return store


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    """A registry on https with a self-signed certificate for 127.0.0.1; .ca is the file to trust."""
    if REGISTRY_BINARY is None:
        pytest.skip(f"the docker-registry binary is not installed ({INSTALL})")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (apt-get install -y openssl)")
    folder = tmp_path_factory.mktemp("tls-registry")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    running = RunningRegistry(folder, tls=(cert, key))
    running.ca, running.key = cert, key
    yield running
    running.stop()
