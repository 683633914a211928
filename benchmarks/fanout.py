"""Scenario 2, fan-out: one sender, N receivers, each receiving every byte.

Baseline: the sender holds N direct connections and writes every copy itself
(round robin, blocking). Relay: the sender names the N receivers and writes once.
Reported: delivered MB/s (N x size over the wall time from the first byte any
receiver got to the last) and relay CPU seconds per delivered GiB.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from multiprocessing.queues import Queue

from .common import (
    CHUNK,
    Relay,
    Table,
    connect,
    cpu_seconds,
    fmt,
    median,
    plain_handshake,
    recv_bytes,
    tune,
)


def _receiver(address: tuple[str, int], chid: str | None, size: int, ready: Queue[object], q: Queue[object]) -> None:
    sock = connect(address)
    if chid is not None:
        plain_handshake(sock, chid, None)
    ready.put("ready")
    q.put(recv_bytes(sock, size))
    sock.close()


def _direct_sender(n: int, size: int, q: Queue[object]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    tune(listener)
    q.put(listener.getsockname())
    conns = [listener.accept()[0] for _ in range(n)]
    block = memoryview(bytes(CHUNK))
    left = size
    while left > 0:
        k = min(left, CHUNK)
        for c in conns:
            c.sendall(block[:k])
        left -= k
    for c in conns:
        c.close()


def _relay_sender(address: tuple[str, int], recvers: list[str], size: int) -> None:
    sock = connect(address)
    plain_handshake(sock, "fan-tx", recvers)
    block = memoryview(bytes(CHUNK))
    left = size
    while left > 0:
        k = min(left, CHUNK)
        sock.sendall(block[:k])
        left -= k
    sock.close()


def _collect(receivers: list[mp.Process], q: Queue[object], n: int) -> tuple[float, float]:
    times = [q.get(timeout=120) for _ in range(n)]
    for p in receivers:
        p.join(60)
    spans = [t for t in times if isinstance(t, tuple)]
    assert len(spans) == n, times
    return min(f for f, _ in spans), max(last for _, last in spans)


def direct(n: int, size: int) -> float:
    q: Queue[object] = mp.Queue()
    sender = mp.Process(target=_direct_sender, args=(n, size, q))
    sender.start()
    address = q.get(timeout=30)
    ready_q: Queue[object] = mp.Queue()
    receivers = [mp.Process(target=_receiver, args=(address, None, size, ready_q, q)) for _ in range(n)]
    for p in receivers:
        p.start()
    ready = [ready_q.get(timeout=30) for _ in range(n)]
    assert ready == ["ready"] * n
    first, last = _collect(receivers, q, n)
    sender.join(60)
    return n * size / (last - first) / 1e6


def via_relay(n: int, size: int, relay: Relay) -> tuple[float, float]:
    q: Queue[object] = mp.Queue()
    ready_q: Queue[object] = mp.Queue()
    chids = [f"fan-rx{i}" for i in range(n)]
    receivers = [mp.Process(target=_receiver, args=(relay.address, c, size, ready_q, q)) for c in chids]
    for p in receivers:
        p.start()
    ready = [ready_q.get(timeout=30) for _ in range(n)]
    assert ready == ["ready"] * n
    cpu0 = cpu_seconds(relay.pid)
    sender = mp.Process(target=_relay_sender, args=(relay.address, chids, size))
    sender.start()
    first, last = _collect(receivers, q, n)
    cpu = cpu_seconds(relay.pid) - cpu0
    sender.join(60)
    return n * size / (last - first) / 1e6, cpu / (n * size / 2**30)


def run(fan: tuple[int, ...] = (4, 16), delivered: int = 1 << 30, runs: int = 3) -> Table:
    rows = []
    data: dict[str, dict[str, float | None]] = {}
    with Relay() as relay:
        for n in fan:
            size = delivered // n
            d, r, c = [], [], []
            for i in range(runs):
                if i % 2 == 0:  # each side first in turn
                    d.append(direct(n, size))
                mbps, cpu = via_relay(n, size, relay)
                r.append(mbps)
                c.append(cpu)
                if i % 2 == 1:
                    d.append(direct(n, size))
            dm, rm, cm = median(d), median(r), median(c)
            ratio = median(x / y for x, y in zip(r, d, strict=True))  # within each run, then the median
            data[f"1->{n}"] = {"direct_mbps": dm, "relay_mbps": rm, "relay_cpu_per_gib": cm, "vs_direct": ratio}
            rows.append([f"1 -> {n}", fmt(dm, 0), fmt(rm, 0), fmt(ratio), fmt(cm, 3)])
    return Table(
        "2. Fan-out",
        [
            "fan-out",
            "direct MB/s (sender writes each copy)",
            "relay MB/s",
            "relay vs direct",
            "relay CPU s/delivered GiB",
        ],
        rows,
        [
            f"{delivered >> 20} MiB delivered per run, {runs} runs, each side first in turn; medians, and the ratio "
            "taken within each run, then its median. socat cannot fan out."
        ],
        data,
    )
