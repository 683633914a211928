"""Helpers for the fault tests: a checkable byte stream, streaming threads, a leg proxy that can fail."""

from __future__ import annotations

import hashlib
import re
import selectors
import socket
import struct
import subprocess
import threading
import time

from ..integration.conftest import TIMEOUT, Client, ServerProcess


def pattern(offset: int, size: int) -> bytes:
    """Bytes ``offset`` to ``offset + size`` of an endless stream where every 8-byte word is its own offset.

    A prefix of it shows at once whether anything was lost, duplicated or reordered.
    """
    start = offset - offset % 8
    words = (size + (offset - start) + 7) // 8
    block = struct.pack(f"<{words}Q", *range(start, start + 8 * words, 8))
    return block[offset - start : offset - start + size]


class Streamer(threading.Thread):
    """Sends the pattern on ``client`` until stopped or the connection fails; ``sent`` counts what the kernel took."""

    def __init__(self, client: Client, chunk: int = 64 * 1024) -> None:
        super().__init__(daemon=True)
        self.client, self.chunk = client, chunk
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.client.sock.settimeout(0.2)

    def run(self) -> None:
        data = b""
        try:
            while not self.stop.is_set():
                if not data:
                    data = pattern(self.sent, self.chunk)
                try:
                    n = self.client.sock.send(data)
                except TimeoutError:
                    continue  # the relay holds us back: flow control
                self.sent += n
                data = data[n:]
        except OSError as exc:
            self.error = exc

    def finish(self) -> None:
        """Stop sending and send FIN."""
        self.stop.set()
        self.join(TIMEOUT)
        self.client.sock.settimeout(TIMEOUT)
        self.client.sock.shutdown(socket.SHUT_WR)


class EndWatcher(threading.Thread):
    """Reads a sending client's socket to see the relay end it (FIN or reset), and when."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.ended_at: float | None = None
        self.start()

    def run(self) -> None:
        sock = self.client.sock.dup()  # the streamer's timeouts are its own
        sock.settimeout(None)
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass
        self.ended_at = time.monotonic()
        sock.close()

    def wait(self, timeout: float) -> float:
        self.join(timeout)
        assert self.ended_at is not None, f"the relay did not end the session within {timeout} s"
        return self.ended_at


class Receiver(threading.Thread):
    """Reads until EOF or an error, checking that what arrives is a prefix of the pattern."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.received = 0
        self.intact = True
        self.ended: str | None = None  # "eof", or the error
        self.digest = hashlib.sha256()
        self.client.sock.settimeout(None)

    def run(self) -> None:
        try:
            if self.client.rest:
                self._check(self.client.rest)
            while chunk := self.client.sock.recv(1 << 20):
                self._check(chunk)
            self.ended = "eof"
        except OSError as exc:
            self.ended = repr(exc)
        self.client.sock.close()  # as a client does at the end: the relay's close completes

    def _check(self, chunk: bytes) -> None:
        if self.intact and chunk != pattern(self.received, len(chunk)):
            self.intact = False
        self.digest.update(chunk)
        self.received += len(chunk)

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.received < n:
            assert self.is_alive() or self.received >= n, f"ended ({self.ended}) after {self.received} of {n} bytes"
            assert time.monotonic() < deadline, f"only {self.received} of {n} bytes in {timeout} s"
            time.sleep(0.01)

    def wait_for_growth(self, timeout: float = TIMEOUT) -> None:
        """More bytes arrive: the stream goes on."""
        self.wait_for(self.received + 1, timeout)


def kernel_buffer_bound(sockets: int) -> int:
    """The most a path of ``sockets`` TCP sockets (plus splice pipes) can hold unseen by either end."""

    def maximum(path: str) -> int:
        with open(path) as f:
            return int(f.read().split()[-1])

    per_socket = maximum("/proc/sys/net/ipv4/tcp_wmem") + maximum("/proc/sys/net/ipv4/tcp_rmem")
    return sockets * per_socket + sockets * (1 << 20)


class LegProxy(threading.Thread):
    """A forwarder in front of a node's leg port, which a test can make reset or black-hole its connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = True
        self.holding = False  # read, but keep what was read (``held`` counts it) until set back
        self.held = 0
        self.connections = 0
        self._reset = threading.Event()
        self._done = threading.Event()
        self._closed = False

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        kept: dict[socket.socket, bytearray] = {}  # destination -> bytes held for it
        while not self._closed:
            if kept and not self.holding:
                for dest, data in kept.items():
                    dest.sendall(data)
                kept.clear()
            if self._reset.is_set():
                for s in list(peers):
                    sel.unregister(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                peers.clear()
                self._reset.clear()
                self._done.set()
            for key, _ in sel.select(0.02):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    a, _ = self.listener.accept()
                    b = socket.create_connection(self.target)
                    self.connections += 1
                    peers[a], peers[b] = b, a
                    sel.register(a, selectors.EVENT_READ)
                    sel.register(b, selectors.EVENT_READ)
                    continue
                if not self.forwarding:
                    continue  # black hole: nothing read, nothing forwarded
                try:
                    data = sock.recv(1 << 16)
                    if data and (self.holding or peers[sock] in kept):  # in order: behind what is held
                        kept.setdefault(peers[sock], bytearray()).extend(data)
                        self.held += len(data)
                        continue
                    if data:
                        peers[sock].sendall(data)
                        continue
                    peers[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                sel.unregister(sock)
            if not self.forwarding:
                time.sleep(0.01)  # the selector reports the unread sockets at once

    def reset(self) -> None:
        """Every connection through the proxy is reset, at both ends."""
        self._done.clear()
        self._reset.set()
        assert self._done.wait(TIMEOUT)

    def close(self) -> None:
        self._closed = True
        self.join(TIMEOUT)
        self.listener.close()


def closed_fields(node: ServerProcess, chid: str, timeout: float = TIMEOUT) -> dict[str, str]:
    """The fields of ``chid``'s ``session closed`` line, once it is logged."""
    line = node.wait_for_log(rf'session closed chid="{re.escape(chid)}".*', timeout).group(0)
    return dict(re.findall(r'(\w+)="?([^" ]*)"?', line))


def worker_pids(supervisor: ServerProcess) -> dict[str, int]:
    """The supervisor's children by what they are: node ids for workers, ``nats`` for its nats-server."""
    rows = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(supervisor.proc.pid)], capture_output=True, text=True
    ).stdout.splitlines()
    out = {}
    for row in rows:
        pid, args = row.split(None, 1)
        out["nats" if "nats-server" in args else args.split("--node-id ")[-1].split()[0]] = int(pid)
    return out
