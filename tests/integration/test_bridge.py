"""``forwarding bridge`` serving many visitors at once, against a real relay and real local services."""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import forwarding
from forwarding.errors import HandshakeRefused

from .conftest import TIMEOUT, ServerProcess
from .test_tools import E2E_KEY, FWD, EchoServer, relay, wait_online


class RecordingEcho(EchoServer):
    """An echo service that counts its connections and the bytes it was sent."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = 0
        self._lock = threading.Lock()
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        with conn:
            while data := conn.recv(65536):
                with self._lock:
                    self.received += len(data)
                conn.sendall(data)


class Bridge:
    def __init__(self, server: ServerProcess, target: int, *flags: str, chid: str = "office") -> None:
        self.proc = subprocess.Popen(
            [*FWD, "bridge", relay(server), "--chid", chid, "--target", f"127.0.0.1:{target}", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_online(server, chid)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, count: int = 1) -> list[str]:
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while len(found := [line for line in self.lines if text in line]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {count} bridge lines with {text!r}:\n" + "\n".join(self.lines))
                self._cond.wait(left)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT)


async def visit(server: ServerProcess, chid: str, payload: bytes, read: asyncio.Event | None = None) -> bytes:
    """Send ``payload`` through the bridge and return what came back, to the end of the stream."""
    ch = await forwarding.connect(server.address, chid=chid, recvers=["office"], wait=True)
    assert ch.peer is not None
    received = bytearray()

    async def upload() -> None:
        view = memoryview(payload)
        for i in range(0, len(payload), 1 << 18):
            await ch.send(bytes(view[i : i + (1 << 18)]))
        await ch.send_eof()

    async def download() -> None:
        if read is not None:
            await read.wait()  # a stalled visitor: reads nothing until told to
        while chunk := await ch.recv(1 << 20):
            received.extend(chunk)

    try:
        await asyncio.wait_for(asyncio.gather(upload(), download()), 6 * TIMEOUT)
    finally:
        await ch.close()
    return bytes(received)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_twenty_visitors_at_once_each_with_its_own_target_connection(server):
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--allow-any")
    payloads = {f"v{i}": os.urandom(8 << 20) for i in range(20)}

    async def main() -> dict[str, bytes]:
        results = await asyncio.gather(*(visit(server, chid, data) for chid, data in payloads.items()))
        return dict(zip(payloads, results, strict=True))

    try:
        results = asyncio.run(main())
        for chid, data in payloads.items():
            assert sha(results[chid]) == sha(data), chid
        assert echo.connections == 20
        # One line per visitor: who, how long, bytes each way, how it ended.
        lines = bridge.wait_for("visit ended", 20)
        assert all(f"to_target={8 << 20} to_visitor={8 << 20}" in line and 'ended="finished"' in line for line in lines)
        assert bridge.stop() == 0
    finally:
        echo.sock.close()


def test_a_stalled_visitor_does_not_hold_back_the_others(server):
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--allow-any")
    stalled_data = os.urandom(8 << 20)
    payloads = {f"v{i}": os.urandom(8 << 20) for i in range(19)}

    async def main() -> None:
        release = asyncio.Event()
        stalled = asyncio.create_task(visit(server, "stalled", stalled_data, read=release))
        # The others all finish while the stalled one reads nothing (its echo backs up
        # through the relay, the bridge and the target's socket: TCP holds it back).
        results = await asyncio.gather(*(visit(server, chid, data) for chid, data in payloads.items()))
        for (chid, data), got in zip(payloads.items(), results, strict=True):
            assert sha(got) == sha(data), chid
        assert not stalled.done()
        release.set()
        assert sha(await stalled) == sha(stalled_data)  # and nothing of it was lost meanwhile

    try:
        asyncio.run(main())
        assert bridge.stop() == 0
    finally:
        echo.sock.close()


def test_intruders_and_broadcasters_never_reach_the_target(server):
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--allow", "alice")

    async def main() -> None:
        alice = await forwarding.connect(server.address, chid="alice", recvers=["office"], wait=True)
        # A broadcaster's junk reaches every session but the service.
        async with forwarding.connect(server.address, chid="shouter") as shouter:
            await shouter.send(b"junk for everyone\n")
        # An intruder that names the bridge is refused before anything is dialled.
        with pytest.raises(HandshakeRefused) as refused:
            await forwarding.connect(server.address, chid="mallory", recvers=["office"])
        assert refused.value.code == "refused"
        assert refused.value.desc == 'service "office" refused the visit: not on the allow-list'
        await alice.send(b"hello")
        assert await alice.recv_exactly(5) == b"hello"
        await alice.close()

    try:
        asyncio.run(main())
        bridge.wait_for('visit refused visitor="mallory" reason="not on the allow-list"')
        assert echo.connections == 1 and echo.received == 5  # alice's five bytes and nothing else
    finally:
        bridge.stop()
        echo.sock.close()


def test_with_a_key_the_visitor_proves_it_before_the_target_is_dialled(server):
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--e2e-key", E2E_KEY)
    try:
        ok = subprocess.run(
            [*FWD, "connect", relay(server), "--to", "office", "--wait", "--e2e-key", E2E_KEY],
            input=b"sealed hello\n",
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"sealed hello\n"
        assert echo.connections == 1
        wrong = subprocess.run(
            [*FWD, "connect", relay(server), "--chid", "wrongkey", "--to", "office", "--wait",
             "--passphrase", "not the key"],
            input=b"let me in\n", capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert wrong.stdout == b""
        bridge.wait_for('visitor="wrongkey"')
        line = bridge.wait_for('visit ended visitor="wrongkey"')[0]
        assert "failed the key proof" in line and "target not dialled" in line, line
        # A plain client's bytes are no proof either.
        plain = subprocess.run(
            [*FWD, "connect", relay(server), "--chid", "plain", "--to", "office", "--wait"],
            input=b"x" * 100, capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert plain.stdout == b""
        assert "not an end-to-end sealed stream" in bridge.wait_for('visit ended visitor="plain"')[0]
        assert echo.connections == 1 and echo.received == len(b"sealed hello\n")
    finally:
        bridge.stop()
        echo.sock.close()


def test_visitors_over_the_limit_are_told_the_bridge_is_busy(server):
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--allow-any", "--max-visitors", "1")

    async def main() -> None:
        first = await forwarding.connect(server.address, chid="first", recvers=["office"], wait=True)
        with pytest.raises(HandshakeRefused) as refused:
            await forwarding.connect(server.address, chid="second", recvers=["office"])
        assert "busy: serving 1 visitors" in refused.value.desc
        await first.close()

    try:
        asyncio.run(main())
    finally:
        bridge.stop()
        echo.sock.close()


def test_a_bridge_open_to_no_one_refuses_to_start(server):
    out = subprocess.run(
        [*FWD, "bridge", relay(server), "--chid", "office", "--target", "127.0.0.1:22"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("forwarding bridge: no visitor would be allowed; give --allow CHID")


# -- real sshd: the README's example ---------------------------------------------------


@pytest.fixture
def sshd(tmp_path):
    """sshd on a free loopback port with a throwaway host key and one authorised key."""
    sshd_bin, keygen = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh-keygen")
    if not (os.path.exists(sshd_bin) and keygen and shutil.which("ssh") and shutil.which("scp")):
        pytest.skip("openssh-server and openssh-client are not installed (make test installs them as root with apt)")
    if os.geteuid() != 0:
        pytest.skip("sshd's privilege separation needs root here")
    for name in ("host", "user"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    shutil.copy(tmp_path / "user.pub", tmp_path / "authorized_keys")
    os.chmod(tmp_path / "authorized_keys", 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPidFile {tmp_path / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        "MaxStartups 50\nSubsystem sftp internal-sftp\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)  # polling a port that is not open yet: nothing to wait on
    yield port, tmp_path / "user"
    proc.terminate()
    proc.wait(TIMEOUT)


def test_ten_ssh_sessions_and_an_scp_at_once_through_one_bridge(server, sshd, tmp_path):
    port, key = sshd
    bridge = Bridge(server, port, "--e2e-key", E2E_KEY)
    proxy = f"{FWD[0]} -m forwarding connect {relay(server)} --to office --wait --e2e-key {E2E_KEY}"
    ssh_opts = ["-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", f"ProxyCommand={proxy}"]  # fmt: skip
    user = getpass.getuser()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(50 << 20))
    try:
        copy = subprocess.Popen(
            ["scp", *ssh_opts, str(blob), f"{user}@office:{tmp_path / 'copy.bin'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        runs = [
            subprocess.Popen(
                ["ssh", *ssh_opts, f"{user}@office", f"echo run {i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for i in range(10)
        ]
        for i, run in enumerate(runs):
            out, err = run.communicate(timeout=6 * TIMEOUT)
            assert run.returncode == 0, err
            assert out == f"run {i}\n".encode()
        _, err = copy.communicate(timeout=12 * TIMEOUT)
        assert copy.returncode == 0, err
        assert sha((tmp_path / "copy.bin").read_bytes()) == sha(blob.read_bytes())
        assert len(bridge.wait_for("visit ended", 11)) >= 11
        assert bridge.stop() == 0
    finally:
        if bridge.proc.poll() is None:
            bridge.proc.kill()


def test_visits_go_on_while_the_bridge_rejoins_after_losing_its_service_session(start_server, tmp_path):
    admin = str(tmp_path / "admin.sock")
    server = start_server("--admin-socket", admin)
    echo = RecordingEcho()
    bridge = Bridge(server, echo.port, "--allow-any")

    async def main() -> None:
        alice = await forwarding.connect(server.address, chid="alice", recvers=["office"], wait=True)
        await alice.send(b"before")
        assert await alice.recv_exactly(6) == b"before"
        # The operator closes the bridge's own session: alice's pair is separate.
        closed = subprocess.run([*FWD, "admin", admin, "close", "office"], capture_output=True, timeout=TIMEOUT)
        assert closed.returncode == 0, closed.stderr
        await asyncio.to_thread(bridge.wait_for, "service online", 2)  # it rejoined
        await alice.send(b"during")
        assert await alice.recv_exactly(6) == b"during"
        assert await visit(server, "bob", b"after the rejoin") == b"after the rejoin"
        await alice.close()

    try:
        asyncio.run(main())
        assert echo.connections == 2
        assert bridge.stop() == 0
    finally:
        echo.sock.close()
