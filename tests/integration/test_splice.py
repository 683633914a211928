"""The zero-copy path: one-to-one plain sessions forwarded with splice(2) pumps.

The forwarding and flow-control suites already run over both paths; these
tests cover what is particular to pumps: when they engage, a receiver leaving
and coming back, a sender ending with bytes still in the pipe, and a receiver
that gets a pump's bytes and ordinary deliveries at once.
"""

from __future__ import annotations

import os
import re
import socket
import threading

import pytest

from forwarding.server import splice

from .conftest import TIMEOUT, handshake
from .test_forwarding import pump

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="no splice(2) on this platform")


def field(line: str, name: str) -> int:
    m = re.search(rf"\b{name}=(\d+)", line)
    assert m, line
    return int(m.group(1))


def test_a_one_to_one_pair_is_spliced_both_ways(start_server):
    server = start_server("--log-level", "debug")
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    # The later session splices at once, and takes its partner along.
    server.wait_for_log(r'splicing chid="a" recver="b"')
    server.wait_for_log(r'splicing chid="b" recver="a"')
    da, db = os.urandom(16 << 20), os.urandom(16 << 20)
    ta, tb = pump(a.sock, da), pump(b.sock, db)
    assert b.recv_exactly(len(da)) == da
    assert a.recv_exactly(len(db)) == db
    ta.join(TIMEOUT)
    tb.join(TIMEOUT)
    a.sock.shutdown(socket.SHUT_WR)
    line = server.closed_line("a")
    assert 'reason="client_closed"' in line
    assert field(line, "in") == len(da) and field(line, "out") == len(db)


def test_no_splice_flag_and_fan_out_keep_the_ordinary_path(start_server):
    server = start_server("--log-level", "debug", "--no-splice")
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    a.sock.sendall(b"ordinary")
    assert b.recv_exactly(8) == b"ordinary"
    fan = start_server("--log-level", "debug")
    r1, _ = handshake(fan, "r1", [])
    r2, _ = handshake(fan, "r2", [])
    s, _ = handshake(fan, "s", ["r1", "r2"])
    s.sock.sendall(b"fan")
    assert r1.recv_exactly(3) == b"fan" and r2.recv_exactly(3) == b"fan"
    for srv in (server, fan):
        assert not any("splicing" in line for line in srv.lines)


def test_a_receiver_that_leaves_and_returns_gets_what_is_sent_after(start_server):
    server = start_server("--log-level", "debug")
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    first = os.urandom(1 << 20)
    tx.sock.sendall(first)
    assert rx.recv_exactly(len(first)) == first
    rx.close()
    server.closed_line("rx")
    # The pump stopped with its receiver; when "rx" is back, tx splices again.
    rx2, _ = handshake(server, "rx", ["tx"])
    server.wait_for_count(r'splicing chid="tx" recver="rx"', 2)
    tx.sock.sendall(b"second life")
    assert rx2.recv_exactly(11) == b"second life"
    rx2.close()
    server.wait_for_count(r'session closed chid="rx"', 2)
    # With no receiver, tx is read the ordinary way: bytes are dropped and counted.
    tx.sock.sendall(b"into the void")
    tx.sock.shutdown(socket.SHUT_WR)
    line = server.closed_line("tx")
    assert field(line, "dropped") == len(b"into the void")
    assert field(line, "in") == len(first) + 11 + 13


def test_a_sender_that_ends_with_bytes_in_the_pipe_delivers_them_all(start_server):
    server = start_server()
    rx, _ = handshake(server, "rx", ["tx"])
    rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    tx, _ = handshake(server, "tx", ["rx"])
    data = os.urandom(8 << 20)

    def send_and_close() -> None:
        tx.sock.sendall(data)
        tx.sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_and_close, daemon=True)
    sender.start()
    assert rx.recv_exactly(len(data)) == data
    sender.join(TIMEOUT)
    line = server.closed_line("tx")
    assert 'reason="client_closed"' in line and field(line, "in") == len(data)
    assert field(line, "dropped") == 0


def test_a_spliced_stream_and_a_broadcast_into_one_receiver_both_arrive_whole(start_server):
    server = start_server("--log-level", "debug")
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    caster, _ = handshake(server, "caster", [])  # broadcast: reaches rx and tx
    server.wait_for_log(r'splicing chid="tx" recver="rx"')
    n = 4 << 20
    t1, t2 = pump(tx.sock, b"A" * n), pump(caster.sock, b"B" * n)
    got = rx.recv_exactly(2 * n)
    t1.join(TIMEOUT)
    t2.join(TIMEOUT)
    # Raw mode interleaves senders at arbitrary boundaries, but loses nothing.
    assert got.count(b"A") == n and got.count(b"B") == n
    assert tx.recv_exactly(n) == b"B" * n
