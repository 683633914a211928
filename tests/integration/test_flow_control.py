"""Backpressure, stalled receivers, many sessions and abrupt resets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
import time

import pytest

from .conftest import TIMEOUT, Client, handshake
from .test_forwarding import pump


@pytest.fixture
def server(start_server, forwarding_path):
    return start_server(*forwarding_path)


def test_a_slow_reader_gets_every_byte_and_the_server_stays_small(start_server, forwarding_path):
    server = start_server("--slow-receiver-timeout", "60", *forwarding_path)
    # A mutual pair, so that the splice path takes it where it is on.
    b, _ = handshake(server, "slow", ["fast"])
    a, _ = handshake(server, "fast", ["slow"])
    b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    data = os.urandom(256 << 20)
    t = pump(a.sock, data)
    got = bytearray()
    peak = 0
    while len(got) < len(data):
        chunk = b.sock.recv(64 * 1024)
        assert chunk
        got += chunk
        if len(got) % (16 << 20) < 65536:
            peak = max(peak, server.rss_kib())
    t.join(TIMEOUT)
    assert bytes(got) == data
    # 256 MiB went through; the relay held at most its write buffers (1 MiB + a read each).
    assert peak < 80 * 1024, f"server RSS peaked at {peak} KiB"


def test_a_receiver_that_never_reads_is_cut_off_and_others_keep_working(start_server, forwarding_path):
    server = start_server("--slow-receiver-timeout", "1.5", *forwarding_path)
    baseline = server.rss_kib()
    stalled, _ = handshake(server, "sink", ["pusher"])
    sender, _ = handshake(server, "pusher", ["sink"])
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    other_rx, _ = handshake(server, "other-rx", [])
    other_tx, _ = handshake(server, "other-tx", ["other-rx"])

    total = 1 << 30
    block = os.urandom(1 << 20)
    pushed = [0]

    def push() -> None:
        sender.sock.settimeout(60)
        while pushed[0] < total:
            sender.sock.sendall(block)
            pushed[0] += len(block)

    t = threading.Thread(target=push, daemon=True)
    t.start()
    peak = 0
    while t.is_alive():
        peak = max(peak, server.rss_kib())
        # Another pair keeps working while one receiver is stalled.
        other_tx.sock.sendall(b"ping")
        assert other_rx.recv_exactly(4) == b"ping"
        t.join(0.05)
    assert pushed[0] == total
    line = server.closed_line("sink")
    assert 'reason="slow_receiver"' in line
    sender.sock.shutdown(socket.SHUT_WR)
    sender.assert_closed()
    dropped = int(server.closed_line("pusher").split("dropped=")[1].split()[0])
    # All but what "sink" took before the cut-off was dropped, and counted. What
    # the kernel accepted into the relay's send buffer to it counts as taken: up
    # to 8 MiB for a spliced receiver (four 1-MiB pipes, doubled by the kernel),
    # plus a pipe or a write buffer of 1 MiB and what was in flight.
    assert total - 16 * (1 << 20) < dropped <= total
    assert peak - baseline < 64 * 1024, f"RSS grew by {peak - baseline} KiB while 1 GiB was pushed"


def test_500_concurrent_sessions(server):
    async def pair(i: int) -> None:
        async def hs(chid: str, to: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            r, w = await asyncio.open_connection(*server.address)
            w.write(json.dumps({"req": "hs1", "chid": chid}).encode() + b"\n")
            w.write(json.dumps({"req": "hs3", "recvers": [to], "wait": True}).encode() + b"\n")
            assert json.loads(await r.readline())["rsp"] == "hs2"
            assert json.loads(await r.readline())["result"] == "OK"
            return r, w

        (ra, wa), (rb, wb) = await asyncio.gather(hs(f"a{i}", f"b{i}"), hs(f"b{i}", f"a{i}"))
        msg = f"message {i} ".encode() * 100
        wa.write(msg)
        wb.write(msg)
        assert await rb.readexactly(len(msg)) == msg
        assert await ra.readexactly(len(msg)) == msg
        wa.close()
        wb.close()

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(pair(i) for i in range(250))), 60)

    asyncio.run(main())


def test_abrupt_resets_mid_stream_leave_the_server_serving(server):
    rx, _ = handshake(server, "steady-rx", [])
    # Connected throughout: a raw receiver's input ends when its last named
    # sender leaves (docs/protocol.md, 5.1), and the victims come and go.
    tx, _ = handshake(server, "steady-tx", ["steady-rx"])
    for i in range(20):
        victim_rx, _ = handshake(server, f"vrx{i}", [])
        victim_tx, _ = handshake(server, f"vtx{i}", [f"vrx{i}", "steady-rx"])
        victim_tx.sock.sendall(b"x" * 100_000)
        victim_rx.recv_exactly(1000)
        # RST instead of FIN, on both ends, with data in flight.
        for c in (victim_rx, victim_tx):
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        server.closed_line(f"vtx{i}")
        server.closed_line(f"vrx{i}")
    # The steady receiver got exactly the bytes the victims managed to send, in whole.
    assert b"x" in rx.recv_exactly(1)
    tx.sock.sendall(b"END")
    deadline = time.monotonic() + TIMEOUT
    buf = b""
    while not buf.endswith(b"END") and time.monotonic() < deadline:
        buf += rx.sock.recv(1 << 20)
    assert buf.endswith(b"END")
    assert 'reason="reset"' in "\n".join(server.lines)


def test_client_closing_mid_handshake_is_logged_as_abandoned(server):
    c = Client(server.address)
    c.send_json({"req": "hs1", "chid": "gone"})
    c.read_line()
    c.close()
    server.wait_for_log(r'session closed chid="gone" .*reason="handshake_abandoned"')
