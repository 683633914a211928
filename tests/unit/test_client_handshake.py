"""The client and server handshake cores against each other, no sockets (h11's ConnectionPair idea)."""

from __future__ import annotations

import pytest

from forwarding.errors import ChidInUse, HandshakeRefused, ProtocolViolation, WrongSecret
from forwarding.protocol.client import ClientHandshake
from forwarding.protocol.handshake import HandshakeLimits, Hs1Received, Hs3Received, ServerHandshake
from forwarding.protocol.sealing import Sealer


def run_pair(client: ClientHandshake, server: ServerHandshake, online: list[str] | None = None):
    server.receive_data(client.hs1() + (client.hs3() if client.can_pipeline else b""))
    event = server.next_event()
    assert isinstance(event, Hs1Received)
    server.accept_chid(event.chid or "generated")
    client.receive_hs2(server.data_to_send())
    if not client.can_pipeline:
        server.receive_data(client.hs3())
    event = server.next_event()
    if not isinstance(event, Hs3Received):
        return client.receive_hs4(server.data_to_send())
    server.establish(online)
    return client.receive_hs4(server.data_to_send())


def test_plain_pair_pipelines_and_agrees():
    client = ClientHandshake("a", ["b"], timeout=30, wait=True)
    assert client.can_pipeline
    hs4 = run_pair(client, ServerHandshake(HandshakeLimits(), 0.0), online=["b"])
    assert (hs4.chid, hs4.timeout, hs4.online) == ("a", 30.0, ["b"])


def test_generated_chid_is_learned_from_hs2():
    client = ClientHandshake()
    hs4 = run_pair(client, ServerHandshake(HandshakeLimits(), 0.0))
    assert client.chid == hs4.chid == "generated"


def test_sealed_pair_echoes_the_challenge():
    sealer = Sealer(bytes(32))
    client = ClientHandshake("a", None, sealer=sealer)
    assert not client.can_pipeline
    hs4 = run_pair(client, ServerHandshake(HandshakeLimits(), 0.0, sealer=sealer))
    assert hs4.chid == "a"


def test_wrong_secret_raises_wrong_secret():
    client = ClientHandshake("a", sealer=Sealer(bytes(32)))
    server = ServerHandshake(HandshakeLimits(), 0.0, sealer=Sealer(b"\x01" * 32))
    server.receive_data(client.hs1())
    server.next_event()
    with pytest.raises(WrongSecret) as info:
        client.receive_hs2(server.data_to_send())
    assert info.value.code == "bad_seal"


def test_fail_codes_map_to_exceptions():
    client = ClientHandshake("a")
    with pytest.raises(ChidInUse):
        client.receive_hs2(b'{"rsp":"hs4","result":"FAIL","code":"chid_in_use","desc":"chid \\"a\\" is online"}\n')
    with pytest.raises(HandshakeRefused) as info:
        client.receive_hs2(b'{"rsp":"hs4","result":"FAIL","code":"something_new","desc":"?"}\n')
    assert type(info.value) is HandshakeRefused


def test_a_sealed_reply_without_a_secret_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation, match="needs a secret"):
        ClientHandshake("a").receive_hs2(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")
