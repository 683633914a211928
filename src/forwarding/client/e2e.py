"""End-to-end payload sealing for the command-line tools: the relay sees only ciphertext.

The format (docs/protocol.md, section 11) is a STREAM construction over
AES-256-GCM: a stream header carries a random salt, each direction derives its
own key with HKDF, and every record's nonce is a counter plus a "last record"
flag, so records cannot be reordered, dropped, replayed or cut off unnoticed.
I/O-free: feed bytes in, take bytes out.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import IntegrityError

MAGIC = b"FWE1"
SALT_BYTES = 16
HEADER_BYTES = len(MAGIC) + SALT_BYTES
MAX_RECORD = 64 * 1024
"""Most plaintext bytes in one record."""
TAG_BYTES = 16
INFO = b"forwarding-e2e-v1"


def key_from_text(text: str) -> bytes:
    """A 32-byte key from ``forwarding keygen`` output (URL-safe base64)."""
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("--e2e-key must be URL-safe base64 (as printed by forwarding keygen)") from None
    if len(key) != 32:
        raise ValueError(f"--e2e-key must decode to 32 bytes, not {len(key)}")
    return key


def key_from_passphrase(passphrase: str) -> bytes:
    """scrypt(passphrase, salt "forwarding-e2e-v1", n=2^14, r=8, p=1) -> 32 bytes."""
    return Scrypt(salt=INFO, length=32, n=2**14, r=8, p=1).derive(passphrase.encode("utf-8"))


def _stream_key(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(key))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """Seals one direction of a stream."""

    def __init__(self, key: bytes, salt: bytes | None = None) -> None:
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        self._aead = _stream_key(key, salt)
        self._counter = 0
        self._header: bytes | None = MAGIC + salt

    def seal(self, data: bytes) -> bytes:
        records = (self._record(data[i : i + MAX_RECORD], last=False) for i in range(0, len(data), MAX_RECORD))
        return self._take_header() + b"".join(records)

    def hello(self) -> bytes:
        """The header and one empty record: proves the key before there is anything to say.

        A bridge checks it before it dials its target (docs/protocol.md, 13.3)."""
        return self._take_header() + self._record(b"", last=False)

    def finish(self) -> bytes:
        """The final record: marks a clean end, so truncation is detected."""
        return self._take_header() + self._record(b"", last=True)

    def _take_header(self) -> bytes:
        header, self._header = self._header or b"", None
        return header

    def _record(self, chunk: bytes, last: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._counter, last), chunk, None)
        self._counter += 1
        return struct.pack(">I", len(sealed)) + sealed


class Decryptor:
    """Opens one direction of a stream; raises :class:`IntegrityError` on any fault."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead: AESGCM | None = None
        self._buf = bytearray()
        self._counter = 0
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        """Plaintext of every complete record in ``data`` and what came before it."""
        if self.finished and data:
            raise IntegrityError("data after the end of the end-to-end stream")
        self._buf += data
        out = []
        if self._aead is None:
            if len(self._buf) < HEADER_BYTES:
                return b""
            if self._buf[: len(MAGIC)] != MAGIC:
                raise IntegrityError("not an end-to-end sealed stream (does the sender use the same option?)")
            self._aead = _stream_key(self._key, bytes(self._buf[len(MAGIC) : HEADER_BYTES]))
            del self._buf[:HEADER_BYTES]
        while len(self._buf) >= 4 and not self.finished:
            (size,) = struct.unpack_from(">I", self._buf)
            if size < TAG_BYTES or size > MAX_RECORD + TAG_BYTES:
                raise IntegrityError(f"bad end-to-end record length {size}")
            if len(self._buf) < 4 + size:
                break
            sealed = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            out.append(self._open(sealed))
        if self.finished and self._buf:
            raise IntegrityError("data after the end of the end-to-end stream")
        return b"".join(out)

    def _open(self, sealed: bytes) -> bytes:
        assert self._aead is not None
        for last in (False, True):
            try:
                plain = self._aead.decrypt(_nonce(self._counter, last), sealed, None)
            except InvalidTag:
                continue
            self._counter += 1
            self.finished = last
            return plain
        raise IntegrityError("end-to-end authentication failed: wrong key, or the stream was tampered with")

    @property
    def opened(self) -> int:
        """Records opened so far: one proves the sender holds the key."""
        return self._counter

    @property
    def started(self) -> bool:
        """Any byte of a stream has arrived."""
        return self._aead is not None or bool(self._buf)

    def eof(self) -> None:
        """The transport ended: fine only after the final record, or before any byte (no stream at all)."""
        if self.started and not self.finished:
            raise IntegrityError("end-to-end stream cut short: the final record is missing")
