"""Scenario 5 (and 7), handshakes per second: 8 connector processes, plain, sealed and TLS.

Beside the relay, the same plain connectors against two peers (the relay's
plain row is what to compare): HAProxy in front of benchmarks/replier.py
(haproxy's CPU per session: accept, connect to the backend, relay the reply,
close), and replier.py alone, a minimal uvloop server that answers the same
bytes with a fixed reply (the floor of any uvloop server).

Each connector opens a session (generated chid, one recver), waits for hs4, and
resets the connection (no TIME_WAIT to exhaust the port range), over and over.
Plain connectors write the client library's request bytes straight to a socket;
sealed and TLS ones use the library (each of their handshakes is different).
Reported: handshakes per wall-clock second, and per second of relay CPU (what
one core of relay sustains; the connectors share the machine with it).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Protocol

from forwarding.protocol.client import ClientHandshake
from forwarding.protocol.sealing import derive_key

from .common import (
    ROOT,
    Haproxy,
    Relay,
    Security,
    Table,
    cpu_seconds,
    fmt,
    free_port,
    have_haproxy,
    open_session,
    wait_listening,
)

LINGER_RESET = struct.pack("ii", 1, 0)


def _connector(address: tuple[str, int], security: Security, seconds: float, go: Barrier, q: Queue[object]) -> None:
    if security.secret:
        derive_key(security.secret)  # the library remembers it: scrypt once, before the clock starts
    plain = security.secret is None and security.ca is None
    go.wait(60)
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        sock = _plain_session(address) if plain else open_session(address, None, ["nobody"], security)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
        n += 1
    q.put(n)


# The plain handshake is the same bytes every time: the library's own hs1 and hs3,
# pipelined as it sends them. Writing them straight to a socket keeps the load
# generator light, so that it takes less of the two cores the relay shares with
# it; the relay sees exactly what the library would send.
_PLAIN = ClientHandshake(recvers=["nobody"])
_PLAIN_REQUEST = _PLAIN.hs1() + _PLAIN.hs3()


def _plain_session(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)  # a relay that stops answering fails the run instead of hanging it
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect(address)
    _PLAIN.receive_hs4(_request(sock).split(b"\n")[1])  # raises unless hs4 is OK
    return sock


def _request(sock: socket.socket) -> bytes:
    """Send the plain request bytes; return the two reply lines (hs2, hs4)."""
    sock.sendall(_PLAIN_REQUEST)
    buf = b""
    while buf.count(b"\n") < 2:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("relay closed during the handshake")
        buf += chunk
    return buf


def measure(security: Security, seconds: float, connectors: int = 8) -> dict[str, float | None]:
    with Relay(*security.server_args) as relay:
        return measure_on(relay, security, seconds, connectors)


class Target(Protocol):
    """Something connectors connect to, whose process's CPU is counted."""

    address: tuple[str, int]
    pid: int


class Replier:
    """benchmarks/replier.py answering with ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        cmd = [sys.executable, "-m", "benchmarks.replier", str(self.port), reply.hex()]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        self.pid = self.proc.pid
        wait_listening(self.proc, [self.port], "replier")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def relay_reply(relay: Relay) -> bytes:
    """The relay's hs2 and hs4 for the plain connectors' request bytes."""
    with socket.create_connection(relay.address, timeout=10) as sock:
        return _request(sock)


def measure_on(relay: Target, security: Security, seconds: float, connectors: int = 8) -> dict[str, float | None]:
    q: Queue[object] = mp.Queue()
    go = mp.Barrier(connectors + 1)  # every connector is up and has its key
    args = (relay.address, security, seconds, go, q)
    procs = [mp.Process(target=_connector, args=args) for _ in range(connectors)]
    for p in procs:
        p.start()
    go.wait(60)
    cpu0 = cpu_seconds(relay.pid)
    total = sum(int(q.get(timeout=seconds + 60)) for _ in procs)  # type: ignore[call-overload]
    cpu = cpu_seconds(relay.pid) - cpu0
    for p in procs:
        p.join(30)
    return {"per_second": total / seconds, "per_cpu_second": total / cpu if cpu else None}


def peers(seconds: float, runs: int) -> dict[str, list[dict[str, float | None]]]:
    """The plain relay, HAProxy before the replier, and the replier alone, alternating ``runs`` times."""
    plain = Security()
    out: dict[str, list[dict[str, float | None]]] = {"plain": [], "uvloop replier": []}
    with Relay() as relay:
        reply = relay_reply(relay)
        replier = Replier(reply)
        haproxy = Haproxy(replier.address) if have_haproxy() else None
        try:
            targets: dict[str, Target] = {"plain": relay, "uvloop replier": replier}
            if haproxy is not None:
                out[HAPROXY] = []
                targets[HAPROXY] = haproxy
            for i in range(runs):
                names = list(targets)
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    out[name].append(measure_on(targets[name], plain, seconds))
        finally:
            if haproxy is not None:
                haproxy.close()
            replier.close()
    return out


HAPROXY = "haproxy -> replier"


def run(securities: list[Security], seconds: float = 5.0, runs: int = 3) -> Table:
    def med(rs: list[dict[str, float | None]], key: str) -> float | None:
        values = sorted(v for r in rs if (v := r[key]) is not None)
        return values[len(values) // 2] if values else None

    paired = peers(seconds, runs)
    data: dict[str, dict[str, float | None]] = {}
    for name, rs in paired.items():
        data[name] = {"per_second": med(rs, "per_second"), "per_cpu_second": med(rs, "per_cpu_second")}
    for s in securities[1:]:
        data[s.name] = measure(s, seconds)
    ha = paired.get(HAPROXY)
    if ha:
        # CPU per session, the relay's over haproxy's, within each run: the drift cancels.
        ratios = sorted(h / p for r, hr in zip(paired["plain"], ha, strict=True)
                        if (p := r["per_cpu_second"]) and (h := hr["per_cpu_second"]))  # fmt: skip
        data["plain"]["cpu_vs_haproxy"] = ratios[len(ratios) // 2] if ratios else None
    rows = []
    for name, d in data.items():
        per_cpu = d["per_cpu_second"]
        micro = 1e6 / per_cpu if per_cpu else None
        rows.append([name, fmt(d["per_second"], 0), fmt(per_cpu, 0), fmt(micro, 0)])
    notes = [
        f"{seconds:g} s per set-up; plain, haproxy and the replier {runs} times alternating (medians), sealed and "
        "TLS once. The connectors run on the same two cores as the relay. The replier (benchmarks/replier.py) "
        "is a minimal uvloop server answering the same bytes with a fixed reply; haproxy's CPU is its own, not "
        "its backend's.",
    ]
    cpu_vs = data["plain"].get("cpu_vs_haproxy")
    if cpu_vs is not None:
        notes.append(f"Plain relay CPU per handshake / haproxy's per session, within each run: {cpu_vs:.2f}.")
    return Table(
        "5. Handshakes per second (8 concurrent connectors)",
        ["handshake", "per second", "per CPU second", "µs of CPU each"],
        rows,
        notes,
        data,
    )
