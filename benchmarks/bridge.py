"""Scenario 10, many visitors through one bridge: N visitors (1, 16, 64) stream into one local sink.

Each visitor sends its share of a fixed total, half-closes, and waits for the
sink's one-byte answer after the sink has read everything; the time is from
the start signal to the last answer. Three set-ups move the same bytes:

* direct: the visitors connect to the sink;
* relay pairs: each visitor is one end of a plain relay pair, whose other end
  (in the sink's process) reads and answers: the relay alone;
* bridge: each visitor names the bridge (a visit: docs/protocol.md, 13), which
  opens one connection to the sink per visitor: relay and bridge.

Reported: total MB/s, and CPU seconds per GiB of the relay and of the bridge.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import cast

from .common import ROOT, Relay, Table, connect, cpu_seconds, fmt, median, open_session, send_bytes, tune


def _drain_and_answer(sock: socket.socket) -> None:
    buf = bytearray(1 << 18)
    while sock.recv_into(buf):
        pass
    sock.sendall(b"k")
    sock.close()


def _sink(setup: str, relay: tuple[str, int] | None, n: int, ready: Queue[object]) -> None:
    """The service end: a listener (direct, bridge) or n relay sessions (relay pairs)."""
    threads = []
    if setup == "relay pairs":
        assert relay is not None
        socks = [open_session(relay, f"rx{i}", [f"tx{i}"]) for i in range(n)]
        ready.put(0)
        threads = [threading.Thread(target=_drain_and_answer, args=(s,)) for s in socks]
        for t in threads:
            t.start()
    else:
        listener = socket.create_server(("127.0.0.1", 0), backlog=n)
        tune(listener)
        ready.put(listener.getsockname()[1])
        for _ in range(n):
            conn, _ = listener.accept()
            tune(conn)
            t = threading.Thread(target=_drain_and_answer, args=(conn,))
            t.start()
            threads.append(t)
    for t in threads:
        t.join(600)


def _visitors(setup: str, address: tuple[str, int], n: int, share: int, barrier: Barrier, done: Queue[object]) -> None:
    if setup == "direct":
        socks = [connect(address) for _ in range(n)]
    elif setup == "relay pairs":
        socks = [open_session(address, f"tx{i}", [f"rx{i}"]) for i in range(n)]
    else:
        socks = [open_session(address, f"v{i}", ["office"]) for i in range(n)]
    ends: list[float] = []

    def visit(sock: socket.socket) -> None:
        send_bytes(sock, share)
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"k":
            raise RuntimeError("no answer from the sink")
        ends.append(time.monotonic())
        sock.close()

    threads = [threading.Thread(target=visit, args=(s,)) for s in socks]
    barrier.wait(120)
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    done.put(max(ends))


class _Bridge:
    def __init__(self, relay: Relay, target: int, visitors: int) -> None:
        cmd = [sys.executable, "-m", "forwarding", "bridge", f"127.0.0.1:{relay.port}", "--chid", "office",
               "--target", f"127.0.0.1:{target}", "--allow-any", "--max-visitors", str(visitors)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # its first info line: the service session is up
            if "service online" in line:
                break
        else:
            raise RuntimeError("the bridge exited before it joined the relay")
        self._rest = threading.Thread(target=self.proc.stderr.read, daemon=True)  # keep its pipe drained
        self._rest.start()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def measure(setup: str, n: int, total: int) -> dict[str, float | None]:
    share = total // n
    ready: Queue[object] = mp.Queue()
    done: Queue[object] = mp.Queue()
    barrier = mp.Barrier(2)
    relay = Relay() if setup != "direct" else None
    bridge = None
    try:
        sink = mp.Process(target=_sink, args=(setup, relay.address if relay else None, n, ready))
        sink.start()
        port = cast(int, ready.get(timeout=60))
        if setup == "bridge":
            assert relay is not None
            bridge = _Bridge(relay, port, n)
        address = relay.address if relay else ("127.0.0.1", port)
        visitors = mp.Process(target=_visitors, args=(setup, address, n, share, barrier, done))
        visitors.start()
        barrier.wait(120)
        start = time.monotonic()
        relay_cpu = cpu_seconds(relay.pid) if relay else 0.0
        bridge_cpu = cpu_seconds(bridge.proc.pid) if bridge else 0.0
        end = cast(float, done.get(timeout=600))
        gib = n * share / (1 << 30)
        result: dict[str, float | None] = {
            "mbps": n * share / (end - start) / 1e6,
            "relay_cpu_per_gib": (cpu_seconds(relay.pid) - relay_cpu) / gib if relay else None,
            "bridge_cpu_per_gib": (cpu_seconds(bridge.proc.pid) - bridge_cpu) / gib if bridge else None,
        }
        visitors.join(60)
        sink.join(60)
        return result
    finally:
        if bridge:
            bridge.close()
        if relay:
            relay.close()


def run(visitors: tuple[int, ...] = (1, 16, 64), total: int = 512 << 20, runs: int = 3) -> Table:
    data: dict[str, dict[str, float | None]] = {}
    rows = []
    for n in visitors:
        results = {
            setup: [measure(setup, n, total) for _ in range(runs)] for setup in ("direct", "relay pairs", "bridge")
        }
        mbps = {setup: median(r["mbps"] or 0 for r in rs) for setup, rs in results.items()}
        relay_cpu = {s: median(r["relay_cpu_per_gib"] or 0 for r in rs) for s, rs in results.items() if s != "direct"}
        bridge_cpu = median(r["bridge_cpu_per_gib"] or 0 for r in results["bridge"])
        data[f"{n} visitors"] = {
            "direct_mbps": mbps["direct"],
            "pairs_mbps": mbps["relay pairs"],
            "bridge_mbps": mbps["bridge"],
            "bridge_vs_pairs": mbps["bridge"] / mbps["relay pairs"],
            "bridge_cpu_per_gib": bridge_cpu,
        }
        rows.append([
            str(n), fmt(mbps["direct"], 0), fmt(mbps["relay pairs"], 0), fmt(mbps["bridge"], 0),
            fmt(mbps["bridge"] / mbps["relay pairs"]), fmt(relay_cpu["relay pairs"]), fmt(relay_cpu["bridge"]),
            fmt(bridge_cpu),
        ])  # fmt: skip
    return Table(
        f"10. Visitors through one bridge, {total >> 20} MiB in all",
        [
            "visitors",
            "direct MB/s",
            "relay pairs MB/s",
            "bridge MB/s",
            "bridge / pairs",
            "relay CPU s/GiB, pairs",
            "relay CPU s/GiB, bridge",
            "bridge CPU s/GiB",
        ],  # fmt: skip
        rows,
        [
            f"{runs} runs per set-up, medians. Each visitor sends its share, half-closes and waits for the sink's "
            "answer. Through the bridge every byte crosses the relay and then the bridge's Python pipe "
            "(one read and one write per chunk), with one target connection per visitor.",
        ],
        data,
    )
