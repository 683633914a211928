"""The zero-copy path: one-to-one plain sessions forwarded with splice(2) pumps.

The forwarding and flow-control suites already run over both paths; these
tests cover what is particular to pumps: when they engage, a receiver leaving
and coming back, a sender ending with bytes still in the pipe, and a receiver
that gets a pump's bytes and ordinary deliveries at once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading

import pytest

from forwarding.server import splice

from .conftest import TIMEOUT, Client, ServerProcess, handshake, metrics_port, scrape_metrics
from .test_forwarding import exchange, pump

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="no splice(2) on this platform")


def field(line: str, name: str) -> int:
    m = re.search(rf"\b{name}=(\d+)", line)
    assert m, line
    return int(m.group(1))


def sessions(admin_socket: str) -> dict[str, dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(admin_socket)
        sock.sendall(b'{"cmd": "sessions"}\n')
        reply = sock.makefile("rb").readline()
    return {row["chid"]: row for row in json.loads(reply)["sessions"]}


def test_small_messages_stay_on_the_ordinary_path_and_a_stream_is_spliced(start_server, tmp_path):
    admin = str(tmp_path / "admin.sock")
    server = start_server("--log-level", "debug", "--admin-socket", admin, "--metrics", "127.0.0.1:0")
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    for _ in range(50):  # ping-pong: every read is 64 bytes, below --splice-after
        a.sock.sendall(bytes(64))
        b.sock.sendall(b.recv_exactly(64))
        assert a.recv_exactly(64) == bytes(64)
    assert [row["spliced"] for row in sessions(admin).values()] == [False, False]
    big = os.urandom(1 << 20)
    a.sock.sendall(big)  # reads of 16 KiB and more: a stream
    assert b.recv_exactly(len(big)) == big
    server.wait_for_log(r'splicing chid="a" recver="b"')
    listing = sessions(admin)
    assert listing["a"]["spliced"] is True and listing["b"]["spliced"] is False
    assert scrape_metrics(metrics_port(server))["forwarding_spliced_sessions"] == 1
    b.sock.sendall(b"small reply")
    assert a.recv_exactly(11) == b"small reply"
    assert sessions(admin)["b"]["spliced"] is False


def test_a_spliced_receiver_gets_a_larger_send_buffer_where_the_kernel_allows_it(start_server):
    server = start_server("--log-level", "debug")
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    big = os.urandom(1 << 20)
    a.sock.sendall(big)
    assert b.recv_exactly(len(big)) == big
    line = server.wait_for_log(r"splicing .*").group(0)
    wmem_max = splice._sysctl("/proc/sys/net/core/wmem_max")
    request = splice.send_buffer_request(field(line, "pipe"), wmem_max, splice._sysctl("/proc/sys/net/ipv4/tcp_wmem"))
    if request is None:  # this host's wmem_max is below what autotuning reaches
        assert "sndbuf=autotuned" in line
    else:
        assert wmem_max is not None
        assert field(line, "sndbuf") == 2 * min(request, wmem_max)  # the kernel doubles it


def test_a_one_to_one_pair_is_spliced_both_ways(start_server):
    server = start_server("--log-level", "debug", "--splice-after", "1")
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    # With --splice-after 1, each side splices after its first read.
    a.sock.sendall(b"x")
    b.sock.sendall(b"y")
    assert b.recv_exactly(1) == b"x" and a.recv_exactly(1) == b"y"
    server.wait_for_log(r'splicing chid="a" recver="b"')
    server.wait_for_log(r'splicing chid="b" recver="a"')
    size = 16 << 20
    exchange(a, b, size)
    # a's FIN reaches b (its only sender finished) after the last byte; then b's reaches a.
    a.sock.shutdown(socket.SHUT_WR)
    assert b.recv_until_eof() == b""
    b.sock.shutdown(socket.SHUT_WR)
    assert a.recv_until_eof() == b""
    line = server.closed_line("a")
    assert 'reason="client_closed"' in line
    assert field(line, "in") == size + 1 and field(line, "out") == size + 1


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


def reset(c: Client) -> None:
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def start_splicing(server: ServerProcess, tx: Client, rx: Client) -> None:
    """With --splice-after 1, one byte from "tx" to "rx" starts tx's pump."""
    tx.sock.sendall(b"!")
    assert rx.recv_exactly(1) == b"!"
    server.wait_for_log(r'splicing chid="tx" recver="rx"')


def test_a_receiver_that_leaves_and_returns_gets_what_is_sent_after(start_server):
    server = start_server("--log-level", "debug", "--splice-after", "1")
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    first = os.urandom(1 << 20)
    tx.sock.sendall(first)
    assert rx.recv_exactly(len(first)) == first
    server.wait_for_log(r'splicing chid="tx" recver="rx"')
    reset(rx)  # gone at once: a FIN would only end its sending (5.1)
    server.closed_line("rx")
    # The pump stopped with its receiver; when "rx" is back, tx's next read splices again.
    rx2, _ = handshake(server, "rx", ["tx"])
    tx.sock.sendall(b"second life")
    assert rx2.recv_exactly(11) == b"second life"
    server.wait_for_count(r'splicing chid="tx" recver="rx"', 2)
    tx.sock.sendall(b", spliced")
    assert rx2.recv_exactly(9) == b", spliced"
    reset(rx2)
    server.wait_for_count(r'session closed chid="rx"', 2)
    # With no receiver, tx is read the ordinary way: bytes are dropped and counted.
    tx.sock.sendall(b"into the void")
    tx.sock.shutdown(socket.SHUT_WR)
    line = server.closed_line("tx")
    assert field(line, "dropped") == len(b"into the void")
    assert field(line, "in") == len(first) + 11 + 9 + 13


def test_a_sender_that_ends_with_bytes_in_the_pipe_delivers_them_all(start_server):
    server = start_server("--log-level", "debug", "--splice-after", "1")
    rx, _ = handshake(server, "rx", ["tx"])
    rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    tx, _ = handshake(server, "tx", ["rx"])
    start_splicing(server, tx, rx)
    data = os.urandom(8 << 20)

    def send_and_close() -> None:
        tx.sock.sendall(data)
        tx.sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_and_close, daemon=True)
    sender.start()
    assert rx.recv_exactly(len(data)) == data
    assert rx.recv_until_eof() == b""  # tx's FIN follows its last byte
    sender.join(TIMEOUT)
    rx.sock.shutdown(socket.SHUT_WR)
    line = server.closed_line("tx")
    assert 'reason="client_closed"' in line and field(line, "in") == 1 + len(data)
    assert field(line, "dropped") == 0


def test_a_spliced_stream_and_a_broadcast_into_one_receiver_both_arrive_whole(start_server):
    server = start_server("--log-level", "debug", "--splice-after", "1")
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    start_splicing(server, tx, rx)
    caster, _ = handshake(server, "caster", [])  # broadcast: reaches rx and tx
    n = 4 << 20
    t1, t2 = pump(tx.sock, b"A" * n), pump(caster.sock, b"B" * n)
    got = rx.recv_exactly(2 * n)
    t1.join(TIMEOUT)
    t2.join(TIMEOUT)
    # Raw mode interleaves senders at arbitrary boundaries, but loses nothing.
    assert got.count(b"A") == n and got.count(b"B") == n
    assert tx.recv_exactly(n) == b"B" * n
