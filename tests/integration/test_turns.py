"""No client's input holds the event loop for more than a slice (server/turns.py).

uvloop reads one socket up to 32 times in a row, and a read full of 7-byte
frames took about 100 ms to run: a flood of tiny frames froze every other
session for seconds (a probe's round trip took 4 s over framed TCP, 8 s over
a WebSocket). These tests fail that way: the probe pair must make its round
trips while the flood goes on, and the flood itself must lose nothing.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from forwarding.protocol.frames import DATA, HEADER

from .conftest import TIMEOUT, ServerProcess, handshake
from .test_hostile_client import field
from .test_websocket import upgraded_socket

ROUND_TRIPS = 20
FLOOD_FOR = 3 * TIMEOUT
"""The flood stops by itself after this: the probe must be done before."""


class Flood:
    """Sends ``frame`` over and over from a thread until stopped (or FLOOD_FOR has passed)."""

    def __init__(self, sock: socket.socket, frame: bytes) -> None:
        self.sock, self.frame, self.frames = sock, frame, 0
        self.stop = threading.Event()
        self.ran_out = False  # stopped by its own clock, not by the test
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        blob = self.frame * 20_000
        end = time.monotonic() + FLOOD_FOR
        while not self.stop.is_set():
            if time.monotonic() > end:
                self.ran_out = True
                return
            self.sock.sendall(blob)
            self.frames += 20_000

    def underway(self) -> None:
        """Wait until it has sent more than loopback's buffers hold: the relay is reading it."""
        deadline = time.monotonic() + TIMEOUT
        while self.frames * len(self.frame) < 16 << 20:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the flood did not get going"
            time.sleep(0.01)

    def end(self) -> int:
        self.stop.set()
        self.thread.join(FLOOD_FOR)
        assert not self.thread.is_alive()
        return self.frames


def framed_flooder(server: ServerProcess) -> Flood:
    c, _ = handshake(server, "flood", ["nobody"], mode="framed")
    return Flood(c.sock, HEADER.pack(DATA, 0, 0, 1) + b"z")


def websocket_flooder(server: ServerProcess) -> Flood:
    sock = upgraded_socket(server)
    for line in ({"req": "hs1", "chid": "flood"}, {"req": "hs3", "recvers": ["nobody"]}):
        text = json.dumps(line).encode()
        sock.sendall(bytes((0x81, 0x80 | len(text))) + b"\0\0\0\0" + text)  # masked with a zero key
    got = b""
    while b'"hs4"' not in got:
        got += sock.recv(4096)
    assert b'"OK"' in got, got
    return Flood(sock, b"\x82\x81\0\0\0\0z")  # a binary message of one byte


@pytest.mark.parametrize("flooder", [framed_flooder, websocket_flooder], ids=["framed", "websocket"])
def test_a_flood_of_tiny_frames_leaves_the_other_sessions_their_turns(start_server, flooder):
    server = start_server("--ws-port", "0")
    a, _ = handshake(server, "pa", ["pb"])
    b, _ = handshake(server, "pb", ["pa"])
    flood = flooder(server)
    flood.underway()
    for i in range(ROUND_TRIPS):
        a.sock.sendall(b"ping %d;" % i)
        assert b.recv_exactly(len(b"ping %d;" % i)) == b"ping %d;" % i
        b.sock.sendall(b"pong")
        assert a.recv_exactly(4) == b"pong"
    assert not flood.ran_out, "the probe's round trips waited for the flood to end"
    sent = flood.end()
    flood.sock.shutdown(socket.SHUT_WR)
    # What was deferred to later turns is all run, in order, before the end: every byte counted.
    line = server.closed_line("flood")
    assert field(line, "in") == sent, line
    assert field(line, "dropped") == sent, line  # "nobody" is offline: dropped, and counted as such
    flood.sock.close()


def test_the_frames_after_a_turn_run_in_order(start_server):
    """A turn may end inside a read: what waits for the next one must come out in order, whole."""
    server = start_server()
    rx, _ = handshake(server, "rx", None)
    c, _ = handshake(server, "tx", ["rx"], mode="framed")
    payload = b"".join(struct.pack("!I", i) for i in range(200_000))
    frames = b"".join(HEADER.pack(DATA, 0, 0, 4) + payload[i : i + 4] for i in range(0, len(payload), 4))
    c.sock.sendall(frames)
    assert rx.recv_exactly(len(payload)) == payload
