"""The command-line tools against a real server process: connect, bridge, send, recv."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from forwarding import sync
from forwarding.client.e2e import Encryptor

from .conftest import TIMEOUT, ServerProcess

FWD = [sys.executable, "-m", "forwarding"]
E2E_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"  # bytes(range(32)), URL-safe base64


def relay(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


def wait_online(server: ServerProcess, chid: str) -> None:
    server.wait_for_log(rf'session open chid="{chid}"')


def test_connect_pipes_16_mib_both_ways(server):
    da, db = os.urandom(16 << 20), os.urandom(16 << 20)
    procs = {
        name: subprocess.Popen(
            [*FWD, "connect", relay(server), "--chid", name, "--to", peer, "--wait"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for name, peer in (("a", "b"), ("b", "a"))
    }
    results: dict[str, bytes] = {}

    def collect(name: str, n: int) -> None:
        out = procs[name].stdout
        assert out is not None
        results[name] = out.read(n)

    readers = [threading.Thread(target=collect, args=(n, len(d))) for n, d in (("a", db), ("b", da))]
    for t in readers:
        t.start()
    writers = [threading.Thread(target=procs[n].stdin.write, args=(d,)) for n, d in (("a", da), ("b", db))]
    for t in writers:
        t.start()
    for t in writers + readers:
        t.join(TIMEOUT * 3)
    assert results["a"] == db and results["b"] == da
    # Each end of standard input ends one direction; when both have, both tools exit 0.
    for p in procs.values():
        p.stdin.close()
    for p in procs.values():
        assert p.wait(TIMEOUT) == 0


def test_connect_reports_a_refusal_with_exit_code_1(server):
    with sync.connect(server.address, chid="taken"):
        out = subprocess.run(
            [*FWD, "connect", relay(server), "--chid", "taken"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert out.returncode == 1
    assert "is online" in out.stderr and "chid_in_use" in out.stderr


def test_connect_with_end_to_end_sealing(server):
    rx = subprocess.Popen(
        [*FWD, "connect", relay(server), "--chid", "e2e-rx", "--e2e-key", E2E_KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    wait_online(server, "e2e-rx")
    tx = subprocess.run(
        [*FWD, "connect", relay(server), "--chid", "e2e-tx", "--to", "e2e-rx", "--e2e-key", E2E_KEY],
        input=b"secret message\n",
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert tx.returncode == 0, tx.stderr
    assert rx.stdout.read(15) == b"secret message\n"
    rx.stdin.close()
    assert rx.wait(TIMEOUT) == 0
    # The relay carried ciphertext: a 20-byte header, the empty record that proves the key at once
    # (4 + 16), 15 bytes sealed (4 + 15 + 16), an empty final record (4 + 16).
    assert "in=95" in server.closed_line("e2e-tx")


class EchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def echo_through(server: ServerProcess, payload: bytes) -> bytes:
    # wait=True: the bridge may still be rejoining after its previous session.
    with sync.connect(server.address, chid="client", recvers=["svc"], wait=True) as c:
        c.send(payload)
        return c.recv_exactly(len(payload))


def test_bridge_reaches_a_local_service_and_survives_a_relay_restart(start_server):
    echo = EchoServer()
    first = start_server()
    port = first.port
    bridge = subprocess.Popen(
        [*FWD, "bridge", f"127.0.0.1:{port}", "--chid", "svc", "--allow", "client",
         "--target", f"127.0.0.1:{echo.port}", "-v"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_online(first, "svc")
        assert echo_through(first, b"hello through the bridge") == b"hello through the bridge"
        data = os.urandom(1 << 20)
        assert echo_through(first, data) == data  # a second session: the bridge rejoined
        assert first.stop() == 0
        second = start_server("--port", str(port))  # the same address, as after a restart
        wait_online(second, "svc")
        assert echo_through(second, b"after the restart") == b"after the restart"
    finally:
        bridge.terminate()
        bridge.wait(TIMEOUT)
        echo.sock.close()


def start_recv(server: ServerProcess, tmp_path, *extra: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*FWD, "recv", relay(server), "--chid", "bob", "-o", str(tmp_path / "out.bin"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_online(server, "bob")
    return p


@pytest.mark.parametrize("e2e", [[], ["--e2e-key", E2E_KEY], ["--passphrase", "correct horse"]])
def test_send_and_recv_100_mib_with_matching_hash(server, tmp_path, e2e):
    src = tmp_path / "in.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    receiver = start_recv(server, tmp_path, *e2e)
    sender = subprocess.run(
        [*FWD, "send", relay(server), str(src), "--to", "bob", *e2e], capture_output=True, text=True, timeout=120
    )
    assert sender.returncode == 0, sender.stderr
    _, err = receiver.communicate(timeout=120)
    assert receiver.returncode == 0, err
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).hexdigest() == want
    assert want in err


def test_recv_fails_clearly_on_a_tampered_stream(server, tmp_path):
    receiver = start_recv(server, tmp_path)
    data = os.urandom(100_000)
    with sync.connect(server.address, recvers=["bob"]) as fake:
        fake.send(json.dumps({"name": "x", "size": len(data)}).encode() + b"\n")
        tampered = bytearray(data)
        tampered[500] ^= 0xFF  # the "relay" changed a byte; the digest is of the original
        fake.send(bytes(tampered) + hashlib.sha256(data).digest())
        _, err = receiver.communicate(timeout=TIMEOUT)
    assert receiver.returncode == 1
    assert "SHA-256 mismatch" in err
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.bin.part").exists()


def test_recv_fails_clearly_on_a_tampered_sealed_stream(server, tmp_path):
    receiver = start_recv(server, tmp_path, "--e2e-key", E2E_KEY)
    enc = Encryptor(bytes(range(32)))
    wire = bytearray(enc.seal(json.dumps({"name": "x", "size": 10}).encode() + b"\n" + b"0123456789"))
    wire[-3] ^= 1
    with sync.connect(server.address, recvers=["bob"]) as fake:
        fake.send(bytes(wire))
        _, err = receiver.communicate(timeout=TIMEOUT)
    assert receiver.returncode == 1
    assert "end-to-end authentication failed" in err


class GreetingEchoServer(EchoServer):
    """Like sshd: greets each connection first (with its number), then echoes, and
    never closes on its own, so a stale session would show as a missing greeting."""

    def __init__(self) -> None:
        self.count = 0
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:
        self.count += 1
        conn.sendall(b"hello %d\n" % self.count)
        super()._echo(conn)


def test_connect_as_a_proxy_command_through_a_bridge_client_after_client(start_server):
    """What ssh's ProxyCommand does: a `forwarding connect` process whose stdio is the stream.
    Each client in turn must get its own fresh connection to the target."""
    target = GreetingEchoServer()
    server = start_server()
    bridge = subprocess.Popen(
        [*FWD, "bridge", relay(server), "--chid", "office", "--allow", "laptop", "--target", f"127.0.0.1:{target.port}"]
    )
    try:
        for n in (1, 2, 3):
            proxy = subprocess.Popen(
                [*FWD, "connect", relay(server), "--chid", "laptop", "--to", "office", "--wait", "--hangup"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            line = b"SSH-2.0-client %d\r\n" % n
            proxy.stdin.write(line)
            proxy.stdin.flush()
            greeting = b"hello %d\n" % n
            assert proxy.stdout.read(len(greeting) + len(line)) == greeting + line
            proxy.stdin.close()
            assert proxy.wait(TIMEOUT) == 0
    finally:
        bridge.terminate()
        bridge.wait(TIMEOUT)
        target.sock.close()
