"""What every scenario shares: the relay and socat as processes, clients, CPU and memory.

The load generator runs in other processes than the relay, on blocking sockets
with large buffers, so that it is not what a scenario measures.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from forwarding import sync

ROOT = Path(__file__).resolve().parent.parent
"""The repository: benchmarks.lean runs from here."""

CHUNK = 256 * 1024
SOCKBUF = 4 * 1024 * 1024
SECRET = "bench-secret"


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKBUF)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """Connect, retrying while a server starts (no probe: it would count as a client)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(address)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        tune(sock)
        return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(n: int) -> bool:
    """Raise this process's open-file limit to ``n``; False if the OS refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), max(hard, n)))
    except (ValueError, OSError):
        return False
    return True


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith(field + ":"):
                return int(row.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def rotated(names: list[str], i: int) -> list[str]:
    """Run ``i``'s order: each path goes first in turn, so none always follows the same one."""
    k = i % len(names)
    return names[k:] + names[:k]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


@dataclass
class Security:
    """How clients reach the relay: plain, with the sealed handshake, or over TLS."""

    name: str = "plain"
    server_args: tuple[str, ...] = ()
    secret: str | None = None
    ca: str | None = None

    def client_context(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx


def securities(tmp: Path) -> list[Security]:
    """Plain, sealed and TLS set-ups; the TLS one with a throwaway CA made here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration.certs import CA  # the test suite's throwaway PKI

    ca = CA(tmp, "bench-ca")
    server = ca.issue("server", server=True)
    return [
        Security(),
        Security("sealed", ("--secret", SECRET), secret=SECRET),
        Security("tls", ("--tls-cert", str(server.cert), "--tls-key", str(server.key)), ca=str(ca.pair.cert)),
    ]


def open_session(
    address: tuple[str, int], chid: str | None, recvers: list[str] | None, security: Security | None = None
) -> socket.socket:
    """A handshaked blocking socket, by the client library (TLS and the sealed handshake included)."""
    security = security or Security()
    ch = sync.connect(address, chid=chid, recvers=recvers, secret=security.secret, tls=security.client_context())
    tune(ch.sock)
    return ch.sock


def plain_handshake(sock: socket.socket, chid: str, recvers: list[str] | None, **options: object) -> None:
    """The plain handshake in one write: cheap for clients that open thousands.

    ``options`` go into hs3 as they are (``wait=True``, ``hangup=True``).
    """
    hs3: dict[str, object] = {"req": "hs3", **options}
    if recvers is not None:
        hs3["recvers"] = recvers
    sock.sendall(json.dumps({"req": "hs1", "chid": chid}).encode() + b"\n" + json.dumps(hs3).encode() + b"\n")
    buf = bytearray()
    while buf.count(b"\n") < 2:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("relay closed during the handshake")
        buf += chunk
    if b'"OK"' not in buf:
        raise RuntimeError(f"handshake refused: {bytes(buf)!r}")


def send_bytes(sock: socket.socket, size: int) -> None:
    block = memoryview(os.urandom(CHUNK))
    left = size
    while left > 0:
        n = min(left, CHUNK)
        sock.sendall(block[:n])
        left -= n


def recv_bytes(sock: socket.socket, size: int) -> tuple[float, float]:
    """Read ``size`` bytes; the monotonic times of the first and the last byte."""
    buf = bytearray(CHUNK * 4)
    got = sock.recv_into(buf)
    if not got:
        raise EOFError("closed before the first byte")
    first = time.monotonic()
    while got < size:
        n = sock.recv_into(buf)
        if not n:
            raise EOFError(f"got {got} of {size}")
        got += n
    return first, time.monotonic()


def move_pairs(pairs: list[tuple[socket.socket, socket.socket]], size: int, barrier: Any, q: Any) -> None:
    """Each pair's sender sends ``size`` bytes to its receiver, all at once from the barrier on; puts
    the time the last byte anywhere arrived on ``q``, then closes them."""
    ends: list[float] = []

    def receive(sock: socket.socket) -> None:
        ends.append(recv_bytes(sock, size)[1])

    threads = [threading.Thread(target=receive, args=(rx,)) for _, rx in pairs]
    threads += [threading.Thread(target=send_bytes, args=(tx, size)) for tx, _ in pairs]
    barrier.wait(300)
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    q.put(max(ends))
    for tx, rx in pairs:
        tx.close()
        rx.close()


def wait_listening(proc: subprocess.Popen[bytes], ports: list[int], name: str) -> None:
    """Until every port listens; by the kernel's table, not by connecting (a probe would be a session)."""
    deadline = time.monotonic() + 15
    want = [f":{port:04X} " for port in ports]
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            listening = [row for row in f if row.split()[3] == "0A"]
        if all(any(w in row for row in listening) for w in want):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not start listening")


class Relay:
    """``forwarding serve`` on a free loopback port, with limits raised for load."""

    LOAD_FLAGS = (
        "--max-connections",
        "1000000",
        "--max-connections-per-ip",
        "1000000",
        "--handshake-rate",
        "1000000",
        "--handshake-burst",
        "1000000",
    )

    def __init__(self, *args: str, nofile: int | None = None, lean: bool = False, src: Path | None = None) -> None:
        """``lean``: run benchmarks/lean.py, the relay with timeouts and limits stubbed out.

        ``src``: run the ``forwarding`` package found there instead (another revision, benchmarks/ab.py).
        """
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        server = ["benchmarks.lean"] if lean else ["forwarding", "serve"]
        cmd = [sys.executable, "-m", *server, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--log-level", "error", *self.LOAD_FLAGS, *args]

        def limits() -> None:
            if nofile:
                raise_nofile(nofile)

        env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen(cmd, preexec_fn=limits, cwd=ROOT, env=env)
        self.pid = self.proc.pid
        # The metrics listener comes up last, after prometheus-client is imported:
        # waiting for it keeps that import out of what a scenario measures.
        ports = [self.port]
        if "--metrics" in args:
            ports.append(int(args[args.index("--metrics") + 1].rsplit(":", 1)[1]))
        wait_listening(self.proc, ports, "relay")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def have_socat() -> bool:
    return shutil.which("socat") is not None


class Socat:
    """``socat -b 262144`` from a free port to ``target``: the tuned C relay to compare with."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.proc = subprocess.Popen(
            [
                "socat",
                "-b",
                str(CHUNK),
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,nodelay",
                f"TCP:{target[0]}:{target[1]},nodelay",
            ]
        )
        self.pid = self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def have_haproxy() -> bool:
    return shutil.which("haproxy") is not None


HAPROXY_BASE = """global
    nbthread 1
    tune.bufsize 262144
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
HAPROXY_CONFIG = (
    HAPROXY_BASE
    + """    option splice-request
    option splice-response
"""
)
HAPROXY_PROXY = """frontend bench{i}
    bind 127.0.0.1:{port}
    default_backend target{i}
backend target{i}
    server target {host}:{target_port}
"""


class Haproxy:
    """HAProxy tuned as its users tune it for TCP (docs/performance.md): splice both ways,
    256-KiB buffers, one thread, to compare one core with one core."""

    NAME = "haproxy (splice, 1 thread)"

    def __init__(self, *targets: tuple[str, int]) -> None:
        """One frontend per target, all in the one process; ``address`` is the first's."""
        self.ports = [free_port() for _ in targets]
        self.port = self.ports[0]
        self.address = ("127.0.0.1", self.port)
        self._dir = scratch_dir()
        config = self._dir / "haproxy.cfg"
        proxies = [
            HAPROXY_PROXY.format(i=i, port=port, host=host, target_port=target_port)
            for i, (port, (host, target_port)) in enumerate(zip(self.ports, targets, strict=True))
        ]
        config.write_text(HAPROXY_CONFIG + "".join(proxies))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_listening(self.proc, self.ports, "haproxy")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="forwarding-bench-"))


@dataclass
class Table:
    """One scenario's results: Markdown rows for people, numbers for the charts."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]
    data: dict[str, dict[str, float | None]]

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|")
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out += [""] + self.notes
        return "\n".join(out) + "\n"


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"
