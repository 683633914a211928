"""Scenario 5 (and 7), handshakes per second: 8 connector processes, plain, sealed and TLS.

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
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from forwarding.protocol.client import ClientHandshake
from forwarding.protocol.sealing import derive_key

from .common import Relay, Security, Table, cpu_seconds, fmt, open_session

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
    sock.sendall(_PLAIN_REQUEST)
    buf = b""
    while buf.count(b"\n") < 2:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("relay closed during the handshake")
        buf += chunk
    _PLAIN.receive_hs4(buf.split(b"\n")[1])  # raises unless hs4 is OK
    return sock


def measure(security: Security, seconds: float, connectors: int = 8) -> dict[str, float | None]:
    with Relay(*security.server_args) as relay:
        return measure_on(relay, security, seconds, connectors)


def measure_on(relay: Relay, security: Security, seconds: float, connectors: int = 8) -> dict[str, float | None]:
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
