"""Scenario 5 (and 7), handshakes per second: 8 connector processes, plain, sealed and TLS.

Each connector opens a session (generated chid, one recver), waits for hs4, and
resets the connection (no TIME_WAIT to exhaust the port range), over and over.
Reported: handshakes per wall-clock second, and per second of relay CPU (what
one core of relay sustains; the connectors share the machine with it).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from forwarding.protocol.sealing import derive_key

from .common import Relay, Security, Table, cpu_seconds, fmt, open_session

LINGER_RESET = struct.pack("ii", 1, 0)


def _connector(address: tuple[str, int], security: Security, seconds: float, go: Barrier, q: Queue[object]) -> None:
    if security.secret:
        derive_key(security.secret)  # the library remembers it: scrypt once, before the clock starts
    go.wait(60)
    until = time.monotonic() + seconds
    n = 0
    while time.monotonic() < until:
        sock = open_session(address, None, ["nobody"], security)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
        n += 1
    q.put(n)


def measure(security: Security, seconds: float, connectors: int = 8) -> dict[str, float | None]:
    with Relay(*security.server_args) as relay:
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


def run(securities: list[Security], seconds: float = 5.0) -> Table:
    data = {s.name: measure(s, seconds) for s in securities}
    rows = [[name, fmt(d["per_second"], 0), fmt(d["per_cpu_second"], 0)] for name, d in data.items()]
    return Table(
        "5. Handshakes per second (8 concurrent connectors)",
        ["handshake", "per second", "per relay CPU second"],
        rows,
        [f"{seconds:g} s per set-up. The connectors run on the same two cores as the relay."],
        data,
    )
