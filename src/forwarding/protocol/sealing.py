"""Sealed handshake lines: AES-256-GCM under a key derived from the server secret.

docs/protocol.md, "Encrypted handshake", is the contract; its test vectors are
checked against this module. Nothing here is hand-rolled: ``cryptography``
provides scrypt and AES-GCM.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SALT = b"forwarding-handshake-v1"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32
NONCE_BYTES = 12
STEPS = ("hs1", "hs2", "hs3", "hs4", "leg1")
"""The handshake's four lines, and the header of a node-to-node leg (server/legs.py)."""


class SealError(Exception):
    """A line could not be opened: not sealed, wrong secret, tampered, or the wrong step."""

    code = "bad_seal"

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


@functools.lru_cache(maxsize=16)
def derive_key(secret: str) -> bytes:
    """scrypt(secret as UTF-8, salt "forwarding-handshake-v1", n=2^14, r=8, p=1) -> 32 bytes.

    Costs about 16 MiB and tens of milliseconds, so it is remembered: a client
    that connects many times with one secret pays it once.
    """
    kdf = Scrypt(salt=SALT, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(secret.encode("utf-8"))


def new_secret() -> str:
    """A fresh random secret: 32 bytes (256 bits) as URL-safe base64."""
    return secrets.token_urlsafe(32)


def new_challenge() -> str:
    """32 lowercase hex characters (128 bits), fresh for each connection."""
    return secrets.token_hex(16)


class Sealer:
    """Seals and opens handshake lines with one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_secret(cls, secret: str) -> Sealer:
        return cls(derive_key(secret))

    def seal(self, message: bytes, step: str, nonce: bytes | None = None) -> bytes:
        """base64(nonce || AES-GCM(message, aad=step)) + ``\\n``. ``nonce`` is for test vectors only."""
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}")
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        sealed = nonce + self._aead.encrypt(nonce, message, step.encode("ascii"))
        return base64.b64encode(sealed) + b"\n"

    def open(self, line: bytes, step: str) -> bytes:
        """The message inside ``line`` (without its ``\\n``), which must be sealed for ``step``."""
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise SealError(
                "handshake line is not sealed (base64 expected): is the secret set on the client?"
            ) from None
        if len(raw) < NONCE_BYTES + 16:
            raise SealError("sealed handshake line is too short")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], step.encode("ascii"))
        except InvalidTag:
            raise SealError(f"cannot open the sealed {step} line: wrong secret, tampered line or wrong step") from None
