"""Integration fixtures: the real server as a process on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

TIMEOUT = 10.0 * float(os.environ.get("FORWARDING_TEST_TIMEOUT_FACTOR", "1"))
"""Upper bound for any single wait in these tests."""


class ServerProcess:
    """``python -m forwarding serve`` on port 0, its log collected by a thread.

    Reading stderr continuously matters: a server whose log pipe fills up
    blocks, and the test would measure the pipe, not the relay.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (), timeout: float = TIMEOUT
    ) -> None:
        cmd = [*prefix, sys.executable, "-m", "forwarding", "serve", "--port", "0", *args]
        if "--host" not in args:
            cmd += ["--host", "127.0.0.1"]
        full_env = {**os.environ, **(env or {})}
        # Its own process group: a server that will not stop is killed with its workers and nats-server.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True
        )
        self.lines: list[str] = []
        # A supervisor or a cluster node (given a longer start) stops in its own
        # bounds too: its workers' grace, leaving the cluster, its nats-server.
        self.stop_timeout = max(TIMEOUT, timeout * 1.5)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Matches the text and the JSON log format alike.
        ready = self.wait_for_log(r'listening.*address"?[=:] ?"(.+):(\d+)"', timeout)
        self.host = ready.group(1).strip("[]")
        self.port = int(ready.group(2))
        self.address = (self.host, self.port)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> re.Match[str]:
        """Wait for a log line matching ``pattern`` (searched, not anchored)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if m := rx.search(line):
                        return m
                if "<eof>" in self.lines[-1:]:
                    raise AssertionError(f"server exited before logging {pattern!r}:\n" + "\n".join(self.lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def wait_for_count(self, pattern: str, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` log lines match ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for line in self.lines if rx.search(line)) < count:
                left = deadline - time.monotonic()
                if left <= 0 or "<eof>" in self.lines[-1:]:
                    raise AssertionError(f"fewer than {count} lines matching {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def closed_line(self, chid: str) -> str:
        return self.wait_for_log(rf'session closed chid="{re.escape(chid)}".*').group(0)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1])
        raise AssertionError("no VmRSS")

    def stop_cleanly(self, codes: tuple[int, ...] = (0,)) -> None:
        """Stop; the exit status must be one of ``codes`` and the log free of tracebacks."""
        code = self.stop()
        log = "\n".join(self.lines)
        assert "Traceback" not in log, log
        assert code in codes, log

    def stop(self, timeout: float | None = None) -> int:
        timeout = timeout or self.stop_timeout
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n" + "\n".join(self.lines[-60:])) from None
        self._reader.join(TIMEOUT)
        return code


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with the given flags; on teardown each must exit 0 without a traceback."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> ServerProcess:
        server = ServerProcess(*args, env=env, prefix=prefix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_cleanly()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture(params=["splice", "no-splice"])
def forwarding_path(request: pytest.FixtureRequest) -> list[str]:
    """Server flags for each forwarding path: splice(2) pumps for one-to-one pairs, and Python."""
    # "--splice-after 1": pairs splice after their first read, whatever its size,
    # so the suites cross from one path to the other mid-stream.
    return ["--splice-after", "1"] if request.param == "splice" else ["--no-splice"]


class Client:
    """A blocking client that reads handshake replies line by line and keeps what follows."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection(address, timeout=timeout)
        self.rest = b""

    def send_line(self, line: bytes) -> None:
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")

    def read_raw_line(self) -> bytes:
        while b"\n" not in self.rest:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; got {self.rest!r}")
            self.rest += chunk
        line, self.rest = self.rest.split(b"\n", 1)
        return line

    def send_json(self, obj: object, extra: bytes = b"") -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n" + extra)

    def read_line(self) -> dict[str, object]:
        reply = json.loads(self.read_raw_line())
        assert isinstance(reply, dict)
        return reply

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray(self.rest[:n])
        self.rest = self.rest[n:]
        while len(out) < n:
            chunk = self.sock.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def recv_until_eof(self) -> bytes:
        out = bytearray(self.rest)
        self.rest = b""
        while chunk := self.sock.recv(1 << 20):
            out += chunk
        return bytes(out)

    def assert_closed(self) -> None:
        """The server closes the connection (EOF or reset) with nothing more to read; we close too.

        A graceful close by the server waits for our FIN (docs/protocol.md, 5), as
        any client's close would answer it.
        """
        try:
            assert self.recv_until_eof() == b""
        except ConnectionResetError:
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def handshake(
    server: ServerProcess, chid: str | None = None, recvers: list[str] | None = None, **hs3: object
) -> tuple[Client, dict[str, object]]:
    """Connect and handshake; returns the client and its hs4 (which must be OK)."""
    c = Client(server.address)
    hs1: dict[str, object] = {"req": "hs1"}
    if chid is not None:
        hs1["chid"] = chid
    c.send_json(hs1)
    hs2 = c.read_line()
    assert hs2["rsp"] == "hs2", hs2
    msg: dict[str, object] = {"req": "hs3", **hs3}
    if recvers is not None:
        msg["recvers"] = recvers
    c.send_json(msg)
    hs4 = c.read_line()
    assert hs4["result"] == "OK", hs4
    return c, hs4


def ws_port(server: ServerProcess) -> int:
    """The port of a relay started with ``--ws-port 0``, from its log."""
    return int(server.wait_for_log(r'listening for WebSockets address="[^"]*:(\d+)"').group(1))


def metrics_port(server: ServerProcess) -> int:
    """The port of a relay started with ``--metrics 127.0.0.1:0``, from its log."""
    return int(server.wait_for_log(r'metrics address="127\.0\.0\.1:(\d+)"').group(1))


def scrape_metrics(port: int) -> dict[str, float]:
    """``GET /metrics`` as Prometheus would: sample name with labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="session")
def pki_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""
    from .certs import CA

    ca = CA(tmp_path_factory.mktemp("pki-shared"), "ca")
    server = ca.issue("server", server=True)
    return {"ca": str(ca.pair.cert), "cert": str(server.cert), "key": str(server.key)}
