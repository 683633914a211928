"""Scenario 11, WebSocket ends: WebSocket -> TCP and TCP -> WebSocket through the relay, and latency.

The WebSocket client is a bare socket that speaks just enough RFC 6455: the
upgrade, then prebuilt masked 256 KiB binary frames out, and frame headers
parsed on the way in (payloads into one buffer with ``recv_into``), so that it
costs about what the TCP client costs and the relay is what is measured.
Compared with TCP -> TCP on the ordinary path (``--no-splice``: a WebSocket
end is never spliced) and spliced. Latency: 64-byte round trips to a TCP echo
peer through the relay, from a WebSocket end and from a TCP one.
"""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import os
import socket
import struct
import time
from multiprocessing.queues import Queue

from .common import (
    CHUNK,
    Relay,
    Table,
    connect,
    cpu_seconds,
    fmt,
    free_port,
    median,
    plain_handshake,
    recv_bytes,
    send_bytes,
    tune,
)

MASK = b"\x01\x02\x03\x04"


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    key = (MASK * (n // 4 + 1))[:n]
    return head + MASK + bytes(a ^ b for a, b in zip(payload, key, strict=True))


def ws_open(port: int, chid: str, recvers: list[str] | None) -> socket.socket:
    """A handshaked WebSocket session on a bare socket (what follows hs4 is left in the kernel)."""
    sock = connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    if not response.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(response[:200])
    hs3: dict[str, object] = {"req": "hs3"}
    if recvers:
        hs3["recvers"] = recvers
    sock.sendall(_frame(1, json.dumps({"req": "hs1", "chid": chid}).encode()) + _frame(1, json.dumps(hs3).encode()))
    for _ in range(2):  # hs2, hs4: small text frames
        head = _recv_exactly(sock, 2)
        _recv_exactly(sock, head[1] & 0x7F)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def ws_recv_bytes(sock: socket.socket, size: int) -> tuple[float, float]:
    """Read binary frames until ``size`` payload bytes; the times of the first and the last."""
    buf = memoryview(bytearray(CHUNK * 4))
    got = 0
    first = 0.0
    while got < size:
        head = _recv_exactly(sock, 2)
        if not first:
            first = time.monotonic()
        n = head[1] & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", _recv_exactly(sock, 2))
        elif n == 127:
            (n,) = struct.unpack(">Q", _recv_exactly(sock, 8))
        left = n
        while left:
            k = sock.recv_into(buf, min(left, len(buf)))
            if not k:
                raise EOFError
            left -= k
        got += n
    return first, time.monotonic()


def _ws_sender(port: int, size: int) -> None:
    sock = ws_open(port, "tx", ["rx"])
    frame = _frame(2, os.urandom(CHUNK))
    for _ in range(size // CHUNK):
        sock.sendall(frame)
    sock.recv(1)  # the receiver's word
    sock.close()


def _tcp_sender(port: int, size: int) -> None:
    sock = connect(("127.0.0.1", port))
    plain_handshake(sock, "tx", ["rx"])
    send_bytes(sock, size)
    sock.recv(1)
    sock.close()


def throughput(path: str, size: int) -> tuple[float, float]:
    """MB/s and relay CPU s/GiB for one transfer on ``path``."""
    ws = free_port()
    args = ["--ws-port", str(ws)] + (["--no-splice"] if path != "tcp -> tcp, spliced" else [])
    with Relay(*args) as relay:
        if path.endswith("-> websocket"):
            rx = ws_open(ws, "rx", ["tx"])
        else:
            rx = connect(relay.address)
            plain_handshake(rx, "rx", ["tx"])
        sender = mp.Process(target=_ws_sender if path.startswith("websocket") else _tcp_sender, args=(
            ws if path.startswith("websocket") else relay.port, size))  # fmt: skip
        cpu = cpu_seconds(relay.pid)
        sender.start()
        first, last = (ws_recv_bytes if path.endswith("-> websocket") else recv_bytes)(rx, size)
        cpu = cpu_seconds(relay.pid) - cpu
        rx.sendall(_frame(2, b"k") if path.endswith("-> websocket") else b"k")
        sender.join(60)
        rx.close()
    return size / (last - first) / 1e6, cpu / (size / (1 << 30))


def _echo(port: int, q: Queue[object]) -> None:
    sock = connect(("127.0.0.1", port))
    plain_handshake(sock, "echo", ["ping"], hangup=True)
    q.put("ready")
    try:
        while data := sock.recv(65536):
            sock.sendall(data)
    except OSError:
        pass


def latency(ws_end: bool, rounds: int) -> list[float]:
    ws = free_port()
    with Relay("--ws-port", str(ws)) as relay:
        q: Queue[object] = mp.Queue()
        echo = mp.Process(target=_echo, args=(relay.port, q))
        echo.start()
        q.get(timeout=30)
        if ws_end:
            sock = ws_open(ws, "ping", ["echo"])
            message = _frame(2, b"x" * 64)
        else:
            sock = connect(relay.address)
            plain_handshake(sock, "ping", ["echo"])
            message = b"x" * 64
        tune(sock)
        times = []
        for i in range(rounds + rounds // 10):
            start = time.perf_counter()
            sock.sendall(message)
            if ws_end:
                _recv_exactly(sock, 2 + 64)
            else:
                _recv_exactly(sock, 64)
            if i >= rounds // 10:  # after the warm-up
                times.append((time.perf_counter() - start) * 1e6)
        sock.close()
        echo.join(10)
    return sorted(times)


def _pct(times: list[float], p: float) -> float:
    return times[min(len(times) - 1, int(len(times) * p / 100))]


PATHS = ("tcp -> tcp, spliced", "tcp -> tcp, --no-splice", "websocket -> tcp", "tcp -> websocket")


def run(size: int = 1 << 30, runs: int = 3, rounds: int = 5000) -> Table:
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
    for i in range(runs):
        for path in PATHS[i % len(PATHS) :] + PATHS[: i % len(PATHS)]:  # order rotated
            results[path].append(throughput(path, size))
    data: dict[str, dict[str, float | None]] = {}
    base = median(r[0] for r in results["tcp -> tcp, --no-splice"])
    rows = []
    for path in PATHS:
        mbps = median(r[0] for r in results[path])
        cpu = median(r[1] for r in results[path])
        data[path] = {"mbps": mbps, "cpu_per_gib": cpu, "vs_ordinary": mbps / base}
        rows.append([path, fmt(mbps, 0), fmt(mbps / base), fmt(cpu)])
    tcp_rtt, ws_rtt = latency(False, rounds), latency(True, rounds)
    for name, times in (("tcp -> tcp echo", tcp_rtt), ("websocket -> tcp echo", ws_rtt)):
        data[name] = {"p50": _pct(times, 50), "p99": _pct(times, 99)}
    notes = [
        f"{runs} runs of {size >> 20} MiB per path, order rotated, medians; 256 KiB messages or writes. "
        f"64-byte round trips through the relay to a TCP echo peer ({rounds:,} after a warm-up): "
        f"from a TCP end p50 {fmt(_pct(tcp_rtt, 50), 0)} µs, p99 {fmt(_pct(tcp_rtt, 99), 0)} µs; "
        f"from a WebSocket end p50 {fmt(_pct(ws_rtt, 50), 0)} µs, p99 {fmt(_pct(ws_rtt, 99), 0)} µs.",
    ]
    return Table(
        "11. WebSocket ends",
        ["path", "MB/s", "vs tcp -> tcp, --no-splice", "relay CPU s/GiB"],
        rows,
        notes,
        data,
    )
