"""Framed mode's fine print (docs/protocol.md, 12.2 and 12.3), each point against a real server."""

from __future__ import annotations

import os

from forwarding.protocol.frames import DATA, HEADER

from .conftest import Client, handshake
from .test_forwarding import pump
from .test_framed import Framed


def test_replies_come_in_command_order_and_unknown_fields_are_ignored(server):
    me = Framed(server, "me", ["x"])
    wire = b"".join(
        HEADER.pack(2, 0, 0, len(body)) + body
        for body in (
            b'{"id":5,"cmd":"ping","colour":"blue"}',
            b'{"id":3,"cmd":"online","since":null}',
            b'{"id":4,"cmd":"subscribe","presence":null}',
        )
    )
    me.sock.sendall(wire)
    assert [me.control()["id"] for _ in range(3)] == [5, 3, 4]


def test_huge_numbers_and_duplicate_keys_get_a_close_event_not_a_traceback(server):
    for i, body in enumerate([b'{"id":' + b"9" * 5000 + b',"cmd":"ping"}', b'{"id":1,"cmd":"ping","cmd":"eof"}']):
        me = Framed(server, f"me{i}")
        me.sock.sendall(HEADER.pack(2, 0, 0, len(body)) + body)
        event = me.control()
        assert event["event"] == "close" and event["code"] == "bad_frame", event
        me.c.assert_closed()
    assert 'reason="frame_error"' in server.closed_line("me0")
    # And in the handshake: a FAIL with a desc.
    c = Client(server.address)
    c.send_line(b'{"req":"hs1"}')
    c.read_line()
    c.send_line(b'{"req":"hs3","timeout":1' + b"0" * 400 + b"}")
    reply = c.read_line()
    assert reply["result"] == "FAIL" and "finite" in str(reply["desc"])


def test_a_broadcast_online_reply_lists_the_1000_longest_online(start_server):
    server = start_server("--max-connections-per-ip", "2000", "--handshake-rate", "100000", "--handshake-burst", "2000")
    clients = [handshake(server, f"c{i:04d}", ["nobody"])[0] for i in range(1002)]
    me = Framed(server, "me")
    online = me.command("online")["online"]
    assert online == [f"c{i:04d}" for i in range(1000)]
    clients[0].close()
    server.closed_line("c0000")
    assert me.command("online")["online"] == [f"c{i:04d}" for i in range(1, 1001)]


def test_moving_a_subscription_sends_no_events_for_the_new_recvers(server):
    keep = [handshake(server, "already", [])]
    me = Framed(server, "me", ["x"])
    assert me.command("subscribe")["online"] == []
    assert me.command("recvers", recvers=["already"])["online"] == ["already"]  # a snapshot in the reply
    assert me.command("ping")["pong"] is True
    assert me.events == []  # no online event for "already"
    keep += [handshake(server, "x", []), handshake(server, "another", [])]
    assert me.command("ping")["pong"] is True
    assert me.events == []  # x is no longer subscribed to


def test_server_data_frames_from_a_raw_sender_hold_at_most_256_kib(server):
    rx = Framed(server, "rx")
    tx, _ = handshake(server, "tx", ["rx"])
    data = os.urandom(8 << 20)
    t = pump(tx.sock, data, chunk=8 << 20)
    got = bytearray()
    while len(got) < len(data):
        kind, sender, payload = rx.frame()
        assert kind == DATA and sender == "tx" and len(payload) <= 256 * 1024
        got += payload
    t.join()
    assert got == data
