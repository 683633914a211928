"""End-to-end sealing: round trips, and every kind of tampering detected."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarding.client.e2e import HEADER_BYTES, MAX_RECORD, Decryptor, Encryptor, key_from_passphrase, key_from_text
from forwarding.errors import IntegrityError

KEY = bytes(range(32))


def stream(*chunks: bytes, finish: bool = True) -> bytes:
    enc = Encryptor(KEY)
    return b"".join(enc.seal(c) for c in chunks) + (enc.finish() if finish else b"")


def records(wire: bytes) -> list[bytes]:
    out, i = [], HEADER_BYTES
    while i < len(wire):
        (n,) = struct.unpack_from(">I", wire, i)
        out.append(wire[i : i + 4 + n])
        i += 4 + n
    return out


@given(st.lists(st.binary(max_size=3 * MAX_RECORD // 2), max_size=5), st.integers(1, 5000))
def test_round_trip_however_the_stream_is_split(chunks, step):
    wire = stream(*chunks)
    dec = Decryptor(KEY)
    out = b"".join(dec.feed(wire[i : i + step]) for i in range(0, len(wire), step))
    assert out == b"".join(chunks)
    dec.eof()


def test_each_stream_has_its_own_salt_so_no_nonce_repeats():
    assert stream(b"same") != stream(b"same")


def test_wrong_key():
    with pytest.raises(IntegrityError, match="authentication failed"):
        Decryptor(bytes(32)).feed(stream(b"secret"))


def test_flipped_byte():
    wire = bytearray(stream(b"payload" * 10))
    wire[HEADER_BYTES + 10] ^= 1
    with pytest.raises(IntegrityError, match="tampered"):
        Decryptor(KEY).feed(bytes(wire))


def test_reordered_records():
    wire = stream(b"a" * MAX_RECORD, b"b" * MAX_RECORD)
    r = records(wire)
    with pytest.raises(IntegrityError):
        Decryptor(KEY).feed(wire[:HEADER_BYTES] + r[1] + r[0])


def test_dropped_record():
    wire = stream(b"a" * MAX_RECORD, b"b" * MAX_RECORD)
    r = records(wire)
    with pytest.raises(IntegrityError):
        Decryptor(KEY).feed(wire[:HEADER_BYTES] + r[1] + r[2])


def test_truncation_is_detected_at_eof():
    dec = Decryptor(KEY)
    assert dec.feed(stream(b"partial", finish=False)) == b"partial"
    with pytest.raises(IntegrityError, match="cut short"):
        dec.eof()


def test_data_after_the_final_record():
    with pytest.raises(IntegrityError, match="after the end"):
        Decryptor(KEY).feed(stream(b"x") + b"more")


def test_plain_stream_is_refused():
    with pytest.raises(IntegrityError, match="not an end-to-end sealed stream"):
        Decryptor(KEY).feed(b"plain bytes, no header at all")


def test_oversized_record_length_is_refused_before_buffering():
    enc = Encryptor(KEY)
    header = enc.seal(b"")
    with pytest.raises(IntegrityError, match="bad end-to-end record length"):
        Decryptor(KEY).feed(header + struct.pack(">I", 1 << 30))


def test_keys_from_text_and_passphrase():
    import base64

    text = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    assert len(key_from_text(text)) == 32
    with pytest.raises(ValueError, match="32 bytes"):
        key_from_text("c2hvcnQ")
    assert key_from_passphrase("p") == key_from_passphrase("p") != key_from_passphrase("q")


def test_vector_in_the_protocol_doc_rebuilt_from_primitives():
    """Rebuild the documented stream with cryptography's primitives, not with e2e.py."""
    import json
    import re
    from pathlib import Path

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    v = json.loads(re.search(r"<!-- vectors:e2e-v1 -->\s*```json\n(.*?)```", doc, re.S).group(1))
    key, salt = bytes.fromhex(v["key_hex"]), bytes.fromhex(v["salt_hex"])
    aead = AESGCM(HKDF(hashes.SHA256(), 32, salt, b"forwarding-e2e-v1").derive(key))
    wire = b"FWE1" + salt
    parts = [p.encode() for p in v["plaintexts"]] + [b""]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        sealed = aead.encrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), part, None)
        wire += struct.pack(">I", len(sealed)) + sealed
    assert wire.hex() == v["stream_hex"]
    enc = Encryptor(key, salt)
    assert (enc.seal(parts[0]) + enc.seal(parts[1]) + enc.finish()).hex() == v["stream_hex"]
    dec = Decryptor(key)
    assert dec.feed(bytes.fromhex(v["stream_hex"])) == b"".join(parts)
    dec.eof()
