"""Bytes through the relay: intact, in order, to the right receivers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from .conftest import TIMEOUT, Client, handshake


@pytest.fixture
def server(start_server, forwarding_path):
    """Every test here runs over both forwarding paths (most pairs here are one-to-one)."""
    return start_server(*forwarding_path)


def pump(sock: socket.socket, data: bytes, chunk: int = 256 * 1024) -> threading.Thread:
    def run() -> None:
        view = memoryview(data)
        for i in range(0, len(data), chunk):
            sock.sendall(view[i : i + chunk])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_64_mib_of_random_bytes_arrive_intact_and_in_order(server):
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    data = os.urandom(64 * 1024 * 1024)
    sender = pump(a.sock, data)
    got = b.recv_exactly(len(data))
    sender.join(TIMEOUT)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def exchange(a: Client, b: Client, size: int) -> None:
    """``size`` random bytes each way at once; each side gets the other's, intact."""
    da, db = os.urandom(size), os.urandom(size)
    ta, tb = pump(a.sock, da), pump(b.sock, db)
    assert b.recv_exactly(len(da)) == da
    assert a.recv_exactly(len(db)) == db
    ta.join(TIMEOUT)
    tb.join(TIMEOUT)


def test_both_directions_at_once(server):
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    exchange(a, b, 8 << 20)


def test_fan_out_reaches_every_named_receiver_and_no_one_else(server):
    receivers = [handshake(server, f"r{i}", [])[0] for i in range(3)]
    bystander, _ = handshake(server, "bystander", ["nobody"])
    sender, hs4 = handshake(server, "s", ["r0", "r1", "r2"])
    assert hs4["online"] == ["r0", "r1", "r2"]
    data = os.urandom(4 << 20)
    t = pump(sender.sock, data)
    for r in receivers:
        assert r.recv_exactly(len(data)) == data
    t.join(TIMEOUT)
    # The bystander got nothing: the next thing it reads is what we send it now.
    receivers[0].sock.sendall(b"")  # no-op; r0 broadcasts, so use a direct sender instead
    direct, _ = handshake(server, "direct", ["bystander"])
    direct.sock.sendall(b"only-this")
    assert bystander.recv_exactly(9) == b"only-this"


def test_broadcast_goes_to_all_others_never_back_to_the_sender(server):
    a, _ = handshake(server, "a")  # no recvers: broadcast
    b, _ = handshake(server, "b", ["a"])
    c, _ = handshake(server, "c", ["a"])
    a.sock.sendall(b"hello all")
    assert b.recv_exactly(9) == b"hello all"
    assert c.recv_exactly(9) == b"hello all"
    b.sock.sendall(b"from b")
    # If a's own broadcast had come back, it would precede b's bytes.
    assert a.recv_exactly(6) == b"from b"


def test_hs3_and_data_in_one_write(server):
    b, _ = handshake(server, "b", [])
    a = Client(server.address)
    a.send_json({"req": "hs1", "chid": "a"})
    assert a.read_line()["chid"] == "a"
    a.send_json({"req": "hs3", "recvers": ["b"]}, extra=b"same segment as hs3")
    assert a.read_line()["result"] == "OK"
    assert b.recv_exactly(19) == b"same segment as hs3"


def test_whole_handshake_and_data_in_one_write(server):
    b, _ = handshake(server, "b", [])
    a = Client(server.address)
    a.sock.sendall(b'{"req":"hs1","chid":"a"}\n{"req":"hs3","recvers":["b"]}\npipelined')
    assert a.read_line()["rsp"] == "hs2"
    assert a.read_line()["result"] == "OK"
    assert b.recv_exactly(9) == b"pipelined"


def test_data_sent_right_after_hs4_is_never_lost_across_300_pairs(server):
    for i in range(300):
        rx, _ = handshake(server, f"rx{i}", [])
        tx, _ = handshake(server, f"tx{i}", [f"rx{i}"])
        tx.sock.sendall(f"pair {i}".encode())
        assert rx.recv_exactly(len(f"pair {i}")) == f"pair {i}".encode()
        rx.close()
        tx.close()


def test_generated_chids_are_unique_and_reachable(server):
    a, hs4a = handshake(server)
    b, hs4b = handshake(server, None, [str(hs4a["chid"])])
    assert hs4a["chid"] != hs4b["chid"]
    assert len(str(hs4a["chid"])) >= 16
    b.sock.sendall(b"to generated")
    assert a.recv_exactly(12) == b"to generated"


def test_data_for_an_offline_receiver_is_dropped_and_counted(server):
    a, hs4 = handshake(server, "a", ["ghost"])
    assert hs4["online"] == []
    a.sock.sendall(b"x" * 1000)
    a.sock.shutdown(socket.SHUT_WR)
    a.assert_closed()
    assert "dropped=1000" in server.closed_line("a")


def test_receiver_sees_a_sender_that_joins_later(server):
    b, _ = handshake(server, "b", [])
    a, _ = handshake(server, "a", ["b"])
    a.sock.sendall(b"1")
    assert b.recv_exactly(1) == b"1"
