"""Scenario 13, one-to-one over TLS: the relay as shipped, without its malloc tuning, and HAProxy.

Both clients speak TLS to the relay, which decrypts what the sender sends and
encrypts it again for the receiver. The paths, alternating:

* relay TLS: as shipped (glibc's malloc tuned at start, server/malloc.py);
* relay TLS --no-malloc-tuning: the relay before the TLS work of issue 16;
* relay plain: the same pair without TLS, spliced (what TLS costs);
* haproxy TLS: HAProxy 1 thread terminating the sender's TLS and opening TLS to
  the receiver (``bind ... ssl crt``, ``server ... ssl``): the same work, one
  decryption and one encryption per byte; where haproxy is installed.

MB/s from the receiver's first byte to its last; CPU of the relay (or haproxy)
process per GiB.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import throughput
from .common import (
    HAPROXY_BASE,
    Relay,
    Security,
    Table,
    connect,
    cpu_seconds,
    fmt,
    free_port,
    have_haproxy,
    median,
    open_session,
    recv_bytes,
    rotated,
    scratch_dir,
    send_bytes,
    tune,
    wait_listening,
)

HAPROXY_TLS_CONFIG = (
    HAPROXY_BASE
    + """frontend bench
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend target
backend target
    server target {host}:{target_port} ssl verify none
"""
)


class HaproxyTls:
    NAME = "haproxy TLS (1 thread)"

    def __init__(self, target: tuple[str, int], cert: str, key: str) -> None:
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self._dir = scratch_dir()
        pem = self._dir / "server.pem"
        pem.write_text(Path(cert).read_text() + Path(key).read_text())
        config = self._dir / "haproxy.cfg"
        config.write_text(HAPROXY_TLS_CONFIG.format(port=self.port, pem=pem, host=target[0], target_port=target[1]))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_listening(self.proc, [self.port], "haproxy")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def _cert_and_key(security: Security) -> tuple[str, str]:
    args = security.server_args
    return args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1]


def _sender(address: tuple[str, int], size: int, security: Security, relayed: bool) -> None:
    if relayed:
        sock = open_session(address, "bench-tx", ["bench-rx"], security)
    else:
        ctx = security.client_context()
        assert ctx is not None
        sock = ctx.wrap_socket(connect(address), server_hostname="127.0.0.1")
    send_bytes(sock, size)
    sock.recv(1)  # the receiver's word that all arrived
    sock.close()


def via_relay(size: int, relay: Relay, security: Security) -> tuple[float, float]:
    return throughput.via_relay(size, relay, _sender, security)


def via_haproxy(size: int, security: Security) -> tuple[float, float]:
    cert, key = _cert_and_key(security)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        tune(listener)
        proxy = HaproxyTls(listener.getsockname(), cert, key)
        p = mp.Process(target=_sender, args=(proxy.address, size, security, False))
        p.start()
        conn, _ = listener.accept()
        rx = server_ctx.wrap_socket(conn, server_side=True)
        cpu0 = cpu_seconds(proxy.pid)
        first, last = recv_bytes(rx, size)
        cpu = cpu_seconds(proxy.pid) - cpu0
        rx.sendall(b"!")
        p.join()
        rx.close()
        proxy.close()
    return size / (last - first) / 1e6, cpu / (size / 2**30)


def run(tls: Security, size: int = 512 << 20, runs: int = 4) -> Table:
    haproxy = have_haproxy()
    with (
        Relay(*tls.server_args) as tuned,
        Relay(*tls.server_args, "--no-malloc-tuning") as untuned,
        Relay() as plain,
    ):
        paths: dict[str, Callable[[], tuple[float, float]]] = {
            "relay TLS": lambda: via_relay(size, tuned, tls),
            "relay TLS --no-malloc-tuning": lambda: via_relay(size, untuned, tls),
            "relay plain (spliced)": lambda: throughput.via_relay(size, plain),
        }
        if haproxy:
            paths[HaproxyTls.NAME] = lambda: via_haproxy(size, tls)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for i in range(runs):
            for name in rotated(list(paths), i):
                samples[name].append(paths[name]())
    base = samples["relay TLS"]
    data: dict[str, dict[str, float | None]] = {}
    rows = []
    for name, rs in samples.items():
        mb = median(m for m, _ in rs)
        cpu = median(c for _, c in rs)
        # Within each run, then the median: the drift of the shared machine cancels.
        vs_mb = median(m / b for (m, _), (b, _) in zip(rs, base, strict=True) if b)
        cpus = [c / b for (_, c), (_, b) in zip(rs, base, strict=True) if b]
        vs_cpu = median(cpus) if cpus else None
        data[name] = {"mbps": mb, "cpu_per_gib": cpu, "vs_tls_mbps": vs_mb, "vs_tls_cpu": vs_cpu}
        rows.append([name, fmt(mb, 0), fmt(cpu, 3), fmt(vs_mb, 2), fmt(vs_cpu, 2)])
    notes = [
        f"{runs} runs of {size >> 20} MiB, alternating, each path first in turn; medians, and ratios to relay TLS "
        "within each run. Both ends of every path speak TLS (TLS 1.3, the ciphers Python's default context "
        "and the server agree on); relay plain is the same pair without TLS.",
    ]
    if not haproxy:
        notes.append("haproxy is not installed here: its row is missing (make bench installs it with apt).")
    return Table(
        "13. One-to-one over TLS",
        ["path", "MB/s", "CPU s/GiB", "MB/s / relay TLS", "CPU / relay TLS"],
        rows,
        notes,
        data,
    )
