"""Sealed handshake lines, checked against the vectors in docs/protocol.md."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from forwarding.protocol.handshake import HandshakeLimits, Hs1Received, Hs3Received, ServerHandshake
from forwarding.protocol.sealing import Sealer, SealError, derive_key, new_challenge, new_secret

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"


def vectors() -> dict:
    text = DOC.read_text()
    m = re.search(r"<!-- vectors:handshake-v1 -->\s*```json\n(.*?)```", text, re.S)
    assert m, "test vectors missing from docs/protocol.md"
    return json.loads(m.group(1))


def test_key_derivation_matches_the_vectors_and_an_independent_scrypt():
    v = vectors()
    key = derive_key(v["secret"])
    assert key.hex() == v["key_hex"]
    independent = hashlib.scrypt(v["secret"].encode(), salt=b"forwarding-handshake-v1", n=2**14, r=8, p=1, dklen=32)
    assert independent == key


@pytest.mark.parametrize("i", range(4))
def test_each_step_seals_and_opens_as_in_the_vectors(i):
    v = vectors()
    sealer = Sealer(bytes.fromhex(v["key_hex"]))
    vec = v["lines"][i]
    line = sealer.seal(vec["json"].encode(), vec["step"], bytes.fromhex(vec["nonce_hex"]))
    assert line == vec["line"].encode() + b"\n"
    assert sealer.open(vec["line"].encode(), vec["step"]) == vec["json"].encode()


def test_a_line_does_not_open_as_another_step():
    v = vectors()
    sealer = Sealer(bytes.fromhex(v["key_hex"]))
    hs2 = v["lines"][1]
    with pytest.raises(SealError, match="cannot open the sealed hs3 line"):
        sealer.open(hs2["line"].encode(), "hs3")


def test_wrong_key_tampering_and_garbage_are_refused():
    v = vectors()
    line = v["lines"][0]["line"].encode()
    with pytest.raises(SealError, match="wrong secret"):
        Sealer.from_secret("not the secret").open(line, "hs1")
    raw = bytearray(base64.b64decode(line))
    raw[20] ^= 1
    with pytest.raises(SealError, match="tampered"):
        Sealer(bytes.fromhex(v["key_hex"])).open(base64.b64encode(raw), "hs1")
    with pytest.raises(SealError, match="not sealed"):
        Sealer(bytes.fromhex(v["key_hex"])).open(b'{"req":"hs1"}', "hs1")
    with pytest.raises(SealError, match="too short"):
        Sealer(bytes.fromhex(v["key_hex"])).open(base64.b64encode(b"short"), "hs1")


def test_nonces_are_fresh():
    sealer = Sealer(bytes(32))
    assert sealer.seal(b"{}", "hs1") != sealer.seal(b"{}", "hs1")


def test_secrets_and_challenges_have_the_documented_shape():
    assert len(base64.urlsafe_b64decode(new_secret() + "=")) == 32
    c = new_challenge()
    assert re.fullmatch(r"[0-9a-f]{32}", c)


def test_sealed_handshake_core_round_trip():
    v = vectors()
    sealer = Sealer(bytes.fromhex(v["key_hex"]))
    hs = ServerHandshake(HandshakeLimits(), now=0.0, sealer=sealer, challenge="00112233445566778899aabbccddeeff")
    hs.receive_data(v["lines"][0]["line"].encode() + b"\n")
    assert hs.next_event() == Hs1Received("alice")
    hs.accept_chid("alice")
    hs2 = json.loads(sealer.open(hs.data_to_send().rstrip(b"\n"), "hs2"))
    assert hs2 == json.loads(v["lines"][1]["json"])
    hs.receive_data(v["lines"][2]["line"].encode() + b"\n")
    assert isinstance(hs.next_event(), Hs3Received)
    hs.establish(["bob"])
    hs4 = json.loads(sealer.open(hs.data_to_send().rstrip(b"\n"), "hs4"))
    assert hs4 == json.loads(v["lines"][3]["json"])


def test_wrong_challenge_fails_sealed_and_unopenable_line_fails_plain():
    sealer = Sealer(bytes(32))
    hs = ServerHandshake(HandshakeLimits(), now=0.0, sealer=sealer, challenge="aa" * 16)
    hs.receive_data(sealer.seal(b'{"req":"hs1"}', "hs1"))
    hs.next_event()
    hs.accept_chid("x")
    hs.data_to_send()
    hs.receive_data(sealer.seal(b'{"req":"hs3","challenge":"' + b"bb" * 16 + b'"}', "hs3"))
    event = hs.next_event()
    assert "challenge does not match" in event.desc and event.code == "challenge_mismatch"
    assert json.loads(sealer.open(hs.data_to_send().rstrip(b"\n"), "hs4"))["result"] == "FAIL"

    fresh = ServerHandshake(HandshakeLimits(), now=0.0, sealer=sealer)
    fresh.receive_data(b'{"req":"hs1"}\n')
    failed = fresh.next_event()
    assert "not sealed" in failed.desc and failed.code == "bad_seal"
    assert json.loads(fresh.data_to_send())["result"] == "FAIL"  # plain: the client has no key
