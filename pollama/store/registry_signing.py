"""Ollama's signed token requests: ed25519 with the key in ~/.ollama/id_ed25519.

Ollama's registry hands out Bearer tokens to clients that sign the token URL with the
OpenSSH ed25519 key whose public half the user registered on ollama.com. The header is
``Authorization: <base64 of the SSH public key blob>:<base64 of the 64-byte signature>``,
the signed bytes ``GET,<token URL>,<base64 of the hex sha256 of an empty body>``.

ed25519 is written out here (RFC 8032) because the standard library has no ed25519 and
pollama does not depend on a crypto package; signing one token request costs a few ms.
Only unencrypted OpenSSH keys are read, as Ollama generates them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import struct
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from pollama.store.errors import StoreError

# -- ed25519 (RFC 8032, section 5.1) -------------------------------------------------------------
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # the group order
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_BASE = (_BX, _BY, 1, _BX * _BY % _P)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e1 = (y1 - x1) * (y2 - x2) % _P
    e2 = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(scalar: int, point=_BASE):
    result = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _encode(point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _secret_scalar(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def ed25519_public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte ed25519 seed."""
    return _encode(_multiply(_secret_scalar(seed)[0]))


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """The 64-byte ed25519 signature of message with the 32-byte seed (deterministic)."""
    scalar, prefix = _secret_scalar(seed)
    public = _encode(_multiply(scalar))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _encode(_multiply(r))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return big_r + ((r + k * scalar) % _L).to_bytes(32, "little")


# -- OpenSSH keys ----------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.offset, self.where = data, 0, where

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise StoreError(f"{self.where} is not a valid OpenSSH private key (truncated)")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def read_openssh_ed25519(path: Path) -> tuple[bytes, bytes]:
    """(seed, public key blob) of an unencrypted OpenSSH ed25519 private key file."""
    where = str(path)
    text = path.read_text(errors="replace")
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text or end not in text:
        raise StoreError(f"{where} is not an OpenSSH private key")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        raise StoreError(f"{where} is not valid base64") from None
    reader = _Reader(data, where)
    if reader.take(15) != b"openssh-key-v1\0":
        raise StoreError(f"{where} is not an OpenSSH v1 private key")
    cipher, _kdf, _options = reader.string(), reader.string(), reader.string()
    if cipher != b"none":
        raise StoreError(f"{where} is encrypted with a passphrase, which pollama cannot use (Ollama's keys are not)")
    if reader.uint32() != 1:
        raise StoreError(f"{where} must hold exactly one key")
    public_blob = reader.string()
    private = _Reader(reader.string(), where)
    if private.uint32() != private.uint32():
        raise StoreError(f"{where} is damaged (check numbers differ)")
    if private.string() != b"ssh-ed25519":
        raise StoreError(f"{where} is not an ed25519 key")
    public = private.string()
    secret = private.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise StoreError(f"{where} is not a valid ed25519 key")
    seed = secret[:32]
    if ed25519_public_key(seed) != public or public_blob != _ssh_string(b"ssh-ed25519") + _ssh_string(public):
        raise StoreError(f"{where}: the private key does not match its public key")
    return seed, public_blob


def default_key_path() -> Path:
    """Ollama's identity key: ~/.ollama/id_ed25519."""
    return Path(os.path.expanduser("~")) / ".ollama" / "id_ed25519"


def signed_token_request(realm: str, service: str, scope: str, key_path: Path) -> tuple[str, str]:
    """(token URL, Authorization header) of an Ollama-signed token request."""
    seed, public_blob = read_openssh_ed25519(key_path)
    parts = urlsplit(realm)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("service", service))
    query.extend(("scope", s) for s in scope.split(" "))
    query.append(("ts", str(int(time.time()))))
    query.append(("nonce", base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()))
    # Go's url.Values.Encode: keys sorted (stable for repeated keys), '+' for spaces.
    query.sort(key=lambda kv: kv[0])
    url = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"
    empty_body = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    signature = ed25519_sign(seed, f"GET,{url},{empty_body}".encode())
    header = f"{base64.b64encode(public_blob).decode()}:{base64.b64encode(signature).decode()}"
    return url, header
