"""Scenario 1, one-to-one throughput: direct loopback vs the relay vs socat, alternating.

A sender process pushes ``size`` bytes in 256 KiB writes; this process receives
them. MB/s is counted from the first byte to the last; for relays also the relay
process's CPU seconds per GiB. The relay runs twice: with its splice(2) path
(the default for one-to-one pairs) and with ``--no-splice``.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Callable

from .common import (
    Haproxy,
    Relay,
    Security,
    Socat,
    Table,
    connect,
    cpu_seconds,
    fmt,
    have_haproxy,
    have_socat,
    median,
    open_session,
    plain_handshake,
    recv_bytes,
    rotated,
    send_bytes,
    tune,
)


def _sender(address: tuple[str, int], size: int, relayed: bool) -> None:
    sock = connect(address)
    if relayed:
        plain_handshake(sock, "bench-tx", ["bench-rx"])
    send_bytes(sock, size)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the receiver's word that all arrived, so no byte is cut off
    sock.close()


def _listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    tune(listener)
    return listener


def direct(size: int) -> tuple[float, None]:
    with _listener() as listener:
        p = mp.Process(target=_sender, args=(listener.getsockname(), size, False))
        p.start()
        conn, _ = listener.accept()
        first, last = recv_bytes(conn, size)
        conn.close()
        p.join()
    return size / (last - first) / 1e6, None


def via_socat(size: int, peer: type[Socat] | type[Haproxy] = Socat) -> tuple[float, float]:
    with _listener() as listener:
        socat = peer(listener.getsockname())
        p = mp.Process(target=_sender, args=(socat.address, size, False))
        p.start()
        conn, _ = listener.accept()
        cpu0 = cpu_seconds(socat.pid)
        first, last = recv_bytes(conn, size)
        cpu = cpu_seconds(socat.pid) - cpu0
        conn.close()
        p.join()
        socat.close()
    return size / (last - first) / 1e6, cpu / (size / 2**30)


def via_relay(
    size: int, relay: Relay, sender: Callable[..., None] | None = None, security: Security | None = None
) -> tuple[float, float]:
    """``sender`` and ``security``: another sending process, and the set-up both ends use (TLS, scenario 13)."""
    if security is None:
        rx = connect(relay.address)
        plain_handshake(rx, "bench-rx", ["bench-tx"])
        args: tuple[object, ...] = (relay.address, size, True)
    else:
        rx = open_session(relay.address, "bench-rx", ["bench-tx"], security)
        args = (relay.address, size, security, True)
    cpu0 = cpu_seconds(relay.pid)
    p = mp.Process(target=sender or _sender, args=args)
    p.start()
    first, last = recv_bytes(rx, size)
    cpu = cpu_seconds(relay.pid) - cpu0
    rx.sendall(b"!")
    p.join()
    rx.close()
    return size / (last - first) / 1e6, cpu / (size / 2**30)


def run(size: int = 2 << 30, runs: int = 3) -> Table:
    socat = have_socat()
    samples: dict[str, list[tuple[float, float | None]]] = {"direct": [], "relay": [], "relay --no-splice": []}
    if socat:
        samples["socat -b 262144"] = []
    haproxy = have_haproxy()
    if haproxy:
        samples[Haproxy.NAME] = []
    with Relay() as spliced, Relay("--no-splice") as plain:
        paths: dict[str, Callable[[], tuple[float, float | None]]] = {
            "direct": lambda: direct(size),
            "relay": lambda: via_relay(size, spliced),
            "relay --no-splice": lambda: via_relay(size, plain),
        }
        if socat:
            paths["socat -b 262144"] = lambda: via_socat(size)
        if haproxy:
            paths[Haproxy.NAME] = lambda: via_socat(size, Haproxy)
        for i in range(runs):  # alternate, so that drift hits every path alike
            for name in rotated(list(paths), i):
                samples[name].append(paths[name]())
    ref_runs = samples.get("socat -b 262144")
    ha_runs = samples.get(Haproxy.NAME)
    data: dict[str, dict[str, float | None]] = {}
    for name, rs in samples.items():
        cpus = [c for _, c in rs if c is not None]
        d: dict[str, float | None] = {"mbps": median(m for m, _ in rs), "cpu_per_gib": median(cpus) if cpus else None}
        # Ratios within each run (the paths ran back to back), then their median:
        # the shared machine's drift between runs cancels out.
        d["vs_direct"] = median(m / top for (m, _), (top, _) in zip(rs, samples["direct"], strict=True))
        if ref_runs:
            d["vs_socat"] = median(m / r for (m, _), (r, _) in zip(rs, ref_runs, strict=True))
            cpu_ratios = [c / r for (_, c), (_, r) in zip(rs, ref_runs, strict=True) if c is not None and r]
            d["cpu_vs_socat"] = median(cpu_ratios) if cpu_ratios else None
        if ha_runs:
            d["vs_haproxy"] = median(m / r for (m, _), (r, _) in zip(rs, ha_runs, strict=True))
            ha_cpu = [c / r for (_, c), (_, r) in zip(rs, ha_runs, strict=True) if c is not None and r]
            d["cpu_vs_haproxy"] = median(ha_cpu) if ha_cpu else None
        data[name] = d
    rows = [
        [
            name,
            fmt(d["mbps"], 0),
            fmt(d["vs_direct"]),
            fmt(d.get("vs_socat")),
            fmt(d["cpu_per_gib"], 3),
            fmt(d.get("cpu_vs_socat")),
            fmt(d.get("vs_haproxy")),
            fmt(d.get("cpu_vs_haproxy")),
        ]
        for name, d in data.items()
    ]
    notes = [
        f"{size >> 20} MiB per run, {runs} runs, each path first in turn. MB/s and CPU: medians over the runs; "
        "ratios: taken within each run, then their median."
    ]
    if not socat:
        notes.append("socat is not installed: its column is missing (`apt-get install socat`).")
    if haproxy:
        notes.append("haproxy: `mode tcp`, `option splice-request`, `option splice-response`, `tune.bufsize 262144`, "
                     "`nbthread 1` (one core against one core).")  # fmt: skip
    else:
        notes.append("haproxy is not installed: its columns are missing (`apt-get install haproxy`).")
    return Table(
        "1. One-to-one throughput",
        ["path", "MB/s", "vs direct", "vs socat", "relay CPU s/GiB", "CPU vs socat", "vs haproxy", "CPU vs haproxy"],
        rows,
        notes,
        data,
    )
