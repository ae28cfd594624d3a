"""ed25519 (RFC 8032 vectors) and OpenSSH keys as ssh-keygen writes them, for Ollama's token requests."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from pollama.store.errors import StoreError
from pollama.store.registry_signing import (
    ed25519_public_key,
    ed25519_sign,
    read_openssh_ed25519,
)

RFC8032 = [  # (secret seed, public key, message, signature): RFC 8032 section 7.1, tests 1-3
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize("seed, public, message, signature", RFC8032)
def test_rfc8032_vectors(seed, public, message, signature):
    assert ed25519_public_key(bytes.fromhex(seed)).hex() == public
    assert ed25519_sign(bytes.fromhex(seed), bytes.fromhex(message)).hex() == signature


def keygen(tmp_path, passphrase: str = ""):
    tool = shutil.which("ssh-keygen")
    if tool is None:
        pytest.skip("ssh-keygen is not installed (apt-get install -y openssh-client)")
    key = tmp_path / "id_ed25519"
    subprocess.run([tool, "-q", "-t", "ed25519", "-N", passphrase, "-C", "test", "-f", str(key)], check=True)
    return key


def test_reads_an_ssh_keygen_key(tmp_path):
    key = keygen(tmp_path)
    seed, public_blob = read_openssh_ed25519(key)
    assert len(seed) == 32
    assert base64.b64encode(public_blob).decode() == key.with_suffix(".pub").read_text().split()[1]


def test_refuses_encrypted_and_foreign_keys(tmp_path):
    with pytest.raises(StoreError, match="encrypted with a passphrase"):
        read_openssh_ed25519(keygen(tmp_path, "secret"))
    other = tmp_path / "other"
    other.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(StoreError, match="is not an OpenSSH private key"):
        read_openssh_ed25519(other)
