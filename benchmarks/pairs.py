"""Scenario 6 (and 7), many pairs at once: 200 pairs move 4 MiB each, plain, sealed and TLS.

Four client processes hold 50 pairs each, one thread per socket. All sessions
are up before the first byte moves. Reported: total MB/s (every pair's bytes
over the time from the start signal to the last byte anywhere) and the relay's
peak resident memory while they ran. Direct: the same pairs without a relay.
HAProxy (where installed): each worker's pairs through one frontend of one
haproxy process (1 thread, splice both ways) to that worker's own listener.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import cast

from .common import (
    Haproxy,
    Relay,
    Security,
    Table,
    connect,
    fmt,
    have_haproxy,
    median,
    move_pairs,
    open_session,
    rss_kib,
    tune,
)

HAPROXY = "haproxy"
"""The address a worker is given to go through haproxy: it sends its listener's port, gets a frontend's."""


def _worker(
    address: tuple[str, int] | str | None,
    security: Security,
    first: int,
    count: int,
    size: int,
    barrier: Barrier,
    q: Queue[object],
    via: tuple[Queue[object], Queue[object]] | None = None,
) -> None:
    pairs: list[tuple[socket.socket, socket.socket]] = []
    if address is None or address == HAPROXY:  # direct, or through haproxy: our own listener
        listener = socket.create_server(("127.0.0.1", 0), backlog=count)
        tune(listener)
        target = listener.getsockname()
        if via is not None:  # tell the parent our port, and connect where it says
            via[0].put((first, target))
            target = via[1].get(timeout=60)
        for _ in range(count):
            tx = connect(target)
            pairs.append((tx, listener.accept()[0]))
    else:
        assert not isinstance(address, str)
        for i in range(first, first + count):
            rx = open_session(address, f"rx{i}", [f"tx{i}"], security)
            tx = open_session(address, f"tx{i}", [f"rx{i}"], security)
            pairs.append((tx, rx))
    move_pairs(pairs, size, barrier, q)


def measure(
    relay: Relay | None, security: Security, pairs: int, size: int, workers: int = 4, haproxy: bool = False
) -> dict[str, float]:
    q: Queue[object] = mp.Queue()
    barrier = mp.Barrier(workers + 1)
    share = pairs // workers
    address: tuple[str, int] | str | None = relay.address if relay else (HAPROXY if haproxy else None)
    ports: Queue[object] = mp.Queue()
    fronts: list[Queue[object]] = [mp.Queue() for _ in range(workers)]
    procs = [
        mp.Process(
            target=_worker,
            args=(address, security, w * share, share, size, barrier, q, (ports, fronts[w]) if haproxy else None),
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    proxy = None
    if haproxy:
        listeners: dict[int, tuple[str, int]] = {}
        for _ in procs:
            got = cast(tuple[int, tuple[str, int]], ports.get(timeout=60))
            listeners[got[0]] = got[1]
        order = sorted(listeners)
        proxy = Haproxy(*(listeners[first] for first in order))
        for w, first in enumerate(order):
            fronts[first // share].put(("127.0.0.1", proxy.ports[w]))
    watched = relay.pid if relay else (proxy.pid if proxy else None)
    barrier.wait(120)
    start = time.monotonic()
    base = rss_kib(watched) if watched else 0
    peak = base
    ends: list[float] = []
    while len(ends) < workers:
        if watched:
            peak = max(peak, rss_kib(watched))
        try:
            ends.append(q.get(timeout=0.005))  # type: ignore[arg-type]
        except Exception:  # queue.Empty
            continue
    for p in procs:
        p.join(60)
    if proxy is not None:
        proxy.close()
    return {
        "mbps": workers * share * size / (max(ends) - start) / 1e6,
        "peak_mib": peak / 1024,
        "base_mib": base / 1024,
    }


def run(securities: list[Security], pairs: int = 200, size: int = 4 << 20, runs: int = 3) -> Table:
    data: dict[str, dict[str, float | None]] = {}
    direct = median(measure(None, Security(), pairs, size)["mbps"] for _ in range(runs))
    data["direct"] = {"mbps": direct, "peak_mib": None}
    rows = [["direct", fmt(direct, 0), "1.00", "", ""]]
    if have_haproxy():
        results = [measure(None, Security(), pairs, size, haproxy=True) for _ in range(runs)]
        mbps = median(r["mbps"] for r in results)
        peak = max(r["peak_mib"] for r in results)
        base = min(r["base_mib"] for r in results)
        data["haproxy"] = {"mbps": mbps, "peak_mib": peak}
        rows.append(["haproxy (splice, 1 thread), plain", fmt(mbps, 0), fmt(mbps / direct), fmt(base, 0), fmt(peak, 0)])
    for security in securities:
        with Relay(*security.server_args) as relay:
            results = [measure(relay, security, pairs, size) for _ in range(runs)]
        mbps = median(r["mbps"] for r in results)
        peak = max(r["peak_mib"] for r in results)
        base = min(r["base_mib"] for r in results)
        data[f"relay {security.name}"] = {"mbps": mbps, "peak_mib": peak}
        rows.append([f"relay, {security.name}", fmt(mbps, 0), fmt(mbps / direct), fmt(base, 0), fmt(peak, 0)])
    return Table(
        f"6. {pairs} concurrent pairs, {size >> 20} MiB each",
        ["path", "total MB/s", "vs direct", "RSS before, MiB", "peak RSS, MiB"],
        rows,
        [
            f"{runs} runs per set-up, medians of MB/s, highest peak (of the relay or haproxy process). TLS sessions "
            "are not spliced."
        ],  # fmt: skip
        data,
    )
