"""Scenario 9, the hostile neighbour: an unrelated pair's latency while others abuse the relay.

The neighbours, all at once: one client streams newlines into its handshake
(reconnecting whenever the relay refuses it), one framed client pipelines
``online`` commands without reading the replies (with 200 other chids online,
each reply is a few KB), and 1,000 slowloris connections sit in their
handshake with half an hs1 line. The pair's 64-byte ping-pong is measured on
the same relay with and without them, alternating, and the p99 compared
within each run (target: at most 2x the quiet relay's).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from multiprocessing.synchronize import Event

from .common import Relay, Table, connect, cpu_seconds, fmt, median, plain_handshake
from .latency import percentile, via_relay

SLOWLORIS = 1000
CROWD = 200


def _newline_flood(address: tuple[str, int], stop: Event) -> None:
    blank = b"\n" * 65536
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=5) as sock:
                while not stop.is_set():
                    sock.sendall(blank)
        except OSError:
            time.sleep(0.01)  # refused and closed: come back, as a flooder does


def _online_pipeliner(address: tuple[str, int], stop: Event) -> None:
    from forwarding.protocol.frames import control_frame

    sock = connect(address)
    plain_handshake(sock, "pipeliner", None, mode="framed")
    command = control_frame({"id": 1, "cmd": "online"})
    sock.setblocking(False)
    while not stop.is_set():
        try:
            sock.send(command * 1000)
        except BlockingIOError:
            time.sleep(0.001)  # the relay stopped reading us: keep the pressure on
        except OSError:
            return


def _slowloris(address: tuple[str, int], stop: Event) -> None:
    socks = []
    for _ in range(SLOWLORIS):
        s = socket.create_connection(address)
        s.sendall(b'{"req":"hs1","chid":"slow')  # and never the rest
        socks.append(s)
    stop.wait()
    for s in socks:
        s.close()


def _neighbours(relay: Relay) -> tuple[list[mp.Process], Event, list[socket.socket]]:
    stop = mp.Event()
    crowd = []
    for i in range(CROWD):
        s = connect(relay.address)
        plain_handshake(s, f"crowd-{i:03d}-" + "x" * 100, ["nobody"])
        crowd.append(s)
    procs = [mp.Process(target=f, args=(relay.address, stop)) for f in (_newline_flood, _online_pipeliner, _slowloris)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let the slowloris connections and the floods build up
    return procs, stop, crowd


def run(rounds: int = 10000, warmup: int = 1000, runs: int = 4) -> Table:
    quiet: list[list[float]] = []
    hostile: list[list[float]] = []
    busy: dict[str, list[float]] = {"quiet relay": [], "with the neighbours": []}  # relay CPU share

    def timed(name: str, relay: Relay) -> list[float]:
        c0, t0 = cpu_seconds(relay.pid), time.monotonic()
        samples = via_relay(rounds, warmup, relay)
        busy[name].append((cpu_seconds(relay.pid) - c0) / (time.monotonic() - t0))
        return samples

    with Relay() as relay:
        for i in range(runs):
            order = ("quiet", "hostile") if i % 2 == 0 else ("hostile", "quiet")
            for name in order:
                if name == "quiet":
                    quiet.append(timed("quiet relay", relay))
                    continue
                procs, stop, crowd = _neighbours(relay)
                try:
                    hostile.append(timed("with the neighbours", relay))
                finally:
                    stop.set()
                    for p in procs:
                        p.join(30)
                    for s in crowd:
                        s.close()
                time.sleep(0.5)  # the neighbours' closes land before the next quiet run
    data: dict[str, dict[str, float | None]] = {}
    for name, samples in (("quiet relay", quiet), ("with the neighbours", hostile)):
        pooled = [x for run_samples in samples for x in run_samples]
        data[name] = {"p50": percentile(pooled, 50), "p99": percentile(pooled, 99), "cpu": median(busy[name])}
    ratio = median(percentile(h, 99) / percentile(q, 99) for h, q in zip(hostile, quiet, strict=True))
    data["with the neighbours"]["p99_vs_quiet"] = ratio
    rows = [
        [name, fmt(d["p50"], 0), fmt(d["p99"], 0), fmt(d.get("p99_vs_quiet")), fmt(100 * (d["cpu"] or 0), 0)]
        for name, d in data.items()
    ]
    return Table(
        "9. Hostile neighbour (64-byte ping-pong of an unrelated pair)",
        ["relay", "p50 µs", "p99 µs", "p99 vs quiet", "relay CPU %"],
        rows,
        [
            f"Neighbours: a newline flood, a framed client pipelining `online` with {CROWD} chids online, "
            f"{SLOWLORIS} slowloris connections. {rounds} round trips per run, {runs} runs alternating; "
            "the ratio is taken within each run, then the median. A relay kept busy by its neighbours "
            "never sleeps in epoll, so its pair can see shorter round trips than on a quiet one."
        ],
        data,
    )
