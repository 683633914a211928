"""Scenario 3, latency: 64-byte ping-pong, direct vs the relay vs socat.

An echo process sends back every 64-byte message; this process times each round
trip. Percentiles are over all round trips of all runs, in microseconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable
from multiprocessing.queues import Queue

from .common import (
    Haproxy,
    Relay,
    Socat,
    Table,
    connect,
    fmt,
    have_haproxy,
    have_socat,
    median,
    plain_handshake,
    rotated,
    tune,
)

MSG = 64
SOCAT = "socat -b 262144"
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _echo_listening(q: Queue[object]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    q.put(listener.getsockname())
    conn, _ = listener.accept()
    tune(conn)
    _echo(conn)


def _echo_relayed(address: tuple[str, int], tag: str, q: Queue[object]) -> None:
    sock = connect(address)
    plain_handshake(sock, f"echo-{tag}", [f"ping-{tag}"], hangup=True)  # ends when the pinger leaves
    q.put("ready")
    _echo(sock)


def _echo(sock: socket.socket) -> None:
    try:
        while True:
            sock.sendall(_recv_exactly(sock, MSG))
    except (EOFError, ConnectionError):
        sock.close()


def _pingpong(sock: socket.socket, rounds: int, warmup: int) -> list[float]:
    msg = bytes(MSG)
    out = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter_ns()
        sock.sendall(msg)
        _recv_exactly(sock, MSG)
        if i >= warmup:
            out.append((time.perf_counter_ns() - t0) / 1000)
    sock.close()
    return out


def _address(q: Queue[object]) -> tuple[str, int]:
    """The echo listener's address, as it put it on the queue."""
    address = q.get(timeout=30)
    assert isinstance(address, tuple)
    return str(address[0]), int(address[1])


def direct(rounds: int, warmup: int) -> list[float]:
    q: Queue[object] = mp.Queue()
    p = mp.Process(target=_echo_listening, args=(q,))
    p.start()
    samples = _pingpong(connect(_address(q)), rounds, warmup)
    p.join(30)
    return samples


def via_socat(rounds: int, warmup: int, peer: type[Socat] | type[Haproxy] = Socat) -> list[float]:
    q: Queue[object] = mp.Queue()
    p = mp.Process(target=_echo_listening, args=(q,))
    p.start()
    socat = peer(_address(q))
    samples = _pingpong(connect(socat.address), rounds, warmup)
    p.join(30)
    socat.close()
    return samples


def via_relay(rounds: int, warmup: int, relay: Relay) -> list[float]:
    # Fresh chids per run: the last run's pair may still be closing in the relay.
    tag = os.urandom(4).hex()
    sock = connect(relay.address)
    plain_handshake(sock, f"ping-{tag}", [f"echo-{tag}"])
    q: Queue[object] = mp.Queue()
    p = mp.Process(target=_echo_relayed, args=(relay.address, tag, q))
    p.start()
    assert q.get(timeout=30) == "ready"  # its hs4 is out, so it is routable
    samples = _pingpong(sock, rounds, warmup)
    p.join(30)
    return samples


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(rounds: int = 10000, warmup: int = 1000, runs: int = 6) -> Table:
    per_run: dict[str, list[list[float]]] = {"direct": [], "relay": [], "relay --no-splice": []}
    socat = have_socat()
    if socat:
        per_run[SOCAT] = []
    haproxy = have_haproxy()
    if haproxy:
        per_run[Haproxy.NAME] = []
    with Relay() as spliced, Relay("--no-splice") as plain:
        paths: dict[str, Callable[[], list[float]]] = {
            "direct": lambda: direct(rounds, warmup),
            "relay": lambda: via_relay(rounds, warmup, spliced),
            "relay --no-splice": lambda: via_relay(rounds, warmup, plain),
        }
        if socat:
            paths[SOCAT] = lambda: via_socat(rounds, warmup)
        if haproxy:
            paths[Haproxy.NAME] = lambda: via_socat(rounds, warmup, Haproxy)
        for i in range(runs):
            for name in rotated(list(paths), i):
                per_run[name].append(paths[name]())
    data: dict[str, dict[str, float | None]] = {}
    for name, samples in per_run.items():
        pooled = [x for run_samples in samples for x in run_samples]
        d: dict[str, float | None] = {p: percentile(pooled, q) for p, q in PERCENTILES.items()}
        if socat:
            # Within each run the paths ran back to back: compare them there, then
            # take the median, so that the machine's drift between runs cancels.
            for p in ("p50", "p99"):
                q = PERCENTILES[p]
                d[f"{p}_vs_socat"] = median(
                    percentile(mine, q) / percentile(ref, q) for mine, ref in zip(samples, per_run[SOCAT], strict=True)
                )
        if haproxy:
            for p in ("p50", "p99"):
                q = PERCENTILES[p]
                d[f"{p}_vs_haproxy"] = median(
                    percentile(mine, q) / percentile(ref, q)
                    for mine, ref in zip(samples, per_run[Haproxy.NAME], strict=True)
                )
        data[name] = d
    rows = [
        [
            name,
            fmt(d["p50"], 0),
            fmt(d["p99"], 0),
            fmt(d["p99.9"], 0),
            fmt(d.get("p50_vs_socat")),
            fmt(d.get("p99_vs_socat")),
            fmt(d.get("p50_vs_haproxy")),
            fmt(d.get("p99_vs_haproxy")),
        ]
        for name, d in data.items()
    ]
    return Table(
        "3. Latency (64-byte ping-pong, round trip)",
        ["path", "p50 µs", "p99 µs", "p99.9 µs", "p50 vs socat", "p99 vs socat", "p50 vs haproxy", "p99 vs haproxy"],
        rows,
        [
            f"{rounds} round trips per run after {warmup} warm-up, {runs} runs, each path first in turn. "
            "Percentiles over all samples pooled; ratios: within each run, then their median."
        ],
        data,
    )
