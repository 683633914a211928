"""One-to-one throughput: direct loopback vs the relay vs socat, alternating, in one run.

Each path moves the same bytes from a sender process to a receiver process over
blocking sockets with large buffers, so the load generator is not the
bottleneck. Reported: MB/s (median of the runs) and, for relays, the relay
process's CPU seconds per GiB moved. Ratios against direct and socat are what
to track; absolute figures drift on a shared machine.

    python benchmarks/throughput.py [--size-mib 2048] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

CHUNK = 256 * 1024
SOCKBUF = 4 * 1024 * 1024


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKBUF)


def _connect(address: tuple[str, int]) -> socket.socket:
    """Connect, retrying while the server starts (a probe would be taken as the real client)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(address)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _send(address: tuple[str, int], size: int, handshake: dict[str, object] | None) -> None:
    sock = _connect(address)
    _tune(sock)
    if handshake is not None:
        _handshake(sock, handshake)
    block = memoryview(os.urandom(CHUNK))
    left = size
    while left > 0:
        n = min(left, CHUNK)
        sock.sendall(block[:n])
        left -= n
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the far side to finish before closing
    sock.close()


def _handshake(sock: socket.socket, hs3: dict[str, object]) -> None:
    f = sock.makefile("rb", buffering=0)
    sock.sendall(json.dumps({"req": "hs1", "chid": hs3.pop("chid")}).encode() + b"\n")
    _readline(f)
    sock.sendall(json.dumps({"req": "hs3", **hs3}).encode() + b"\n")
    reply = json.loads(_readline(f))
    assert reply["result"] == "OK", reply


def _readline(f: object) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        byte = f.read(1)  # type: ignore[attr-defined]
        if not byte:
            raise EOFError
        out += byte
    return out


def _recv_all(sock: socket.socket, size: int) -> float:
    """Read ``size`` bytes; return seconds from first byte to last."""
    buf = bytearray(CHUNK * 4)
    got = sock.recv_into(buf)
    start = time.perf_counter()
    while got < size:
        n = sock.recv_into(buf)
        if not n:
            raise EOFError(f"got {got} of {size}")
        got += n
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    mbps: float
    cpu_per_gib: float | None


def run_direct(size: int) -> Result:
    listener = socket.create_server(("127.0.0.1", 0))
    _tune(listener)
    p = mp.Process(target=_send, args=(listener.getsockname(), size, None))
    p.start()
    conn, _ = listener.accept()
    secs = _recv_all(conn, size)
    conn.close()
    p.join()
    listener.close()
    return Result(size / secs / 1e6, None)


def run_socat(size: int) -> Result:
    listener = socket.create_server(("127.0.0.1", 0))
    _tune(listener)
    port = free_port()
    target = f"TCP:127.0.0.1:{listener.getsockname()[1]}"
    proc = subprocess.Popen(["socat", "-b", str(CHUNK), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", target])
    p = mp.Process(target=_send, args=(("127.0.0.1", port), size, None))
    p.start()
    conn, _ = listener.accept()
    cpu0 = cpu_seconds(proc.pid)
    secs = _recv_all(conn, size)
    cpu = cpu_seconds(proc.pid) - cpu0
    conn.close()
    p.join()
    proc.wait(10)
    return Result(size / secs / 1e6, cpu / (size / 2**30))


class Relay:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "forwarding", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, "--log-level", "warning", *args])
        _connect(("127.0.0.1", self.port)).close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_relay(size: int, relay: Relay) -> Result:
    rx = _connect(("127.0.0.1", relay.port))
    _tune(rx)
    _handshake(rx, {"chid": "bench-rx", "recvers": ["bench-tx"]})
    p = mp.Process(target=_send, args=(("127.0.0.1", relay.port), size, {"chid": "bench-tx", "recvers": ["bench-rx"]}))
    p.start()
    cpu0 = cpu_seconds(relay.proc.pid)
    secs = _recv_all(rx, size)
    cpu = cpu_seconds(relay.proc.pid) - cpu0
    rx.sendall(b"!")  # release the sender
    p.join()
    rx.close()
    return Result(size / secs / 1e6, cpu / (size / 2**30))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--relay-args", default="", help="extra flags for forwarding serve")
    args = ap.parse_args(argv)
    size = args.size_mib << 20
    have_socat = shutil.which("socat") is not None
    if not have_socat:
        print("socat not found: skipping the socat column (apt-get install socat)")
    relay = Relay(*args.relay_args.split())
    results: dict[str, list[Result]] = {"direct": [], "relay": [], "socat": []}
    try:
        for _ in range(args.runs):  # alternate, so drift hits every path alike
            results["direct"].append(run_direct(size))
            results["relay"].append(run_relay(size, relay))
            if have_socat:
                results["socat"].append(run_socat(size))
    finally:
        relay.close()
    summary: dict[str, dict[str, float | None]] = {}
    for name, rs in results.items():
        if not rs:
            continue
        cpus = [r.cpu_per_gib for r in rs if r.cpu_per_gib is not None]
        summary[name] = {
            "mbps": statistics.median(r.mbps for r in rs),
            "cpu_per_gib": statistics.median(cpus) if cpus else None,
        }
    direct = summary["direct"]["mbps"] or 1.0
    print(f"one-to-one, {args.size_mib} MiB x {args.runs} runs, medians")
    print(f"{'path':8} {'MB/s':>8} {'vs direct':>10} {'CPU s/GiB':>10}")
    for name, s in summary.items():
        cpu = "" if s["cpu_per_gib"] is None else f"{s['cpu_per_gib']:.3f}"
        print(f"{name:8} {s['mbps']:8.0f} {s['mbps'] / direct:10.2f} {cpu:>10}")
    if "socat" in summary:
        ratio = (summary["relay"]["mbps"] or 0) / (summary["socat"]["mbps"] or 1)
        print(f"relay/socat MB/s: {ratio:.2f}")
    return summary


if __name__ == "__main__":
    main()
