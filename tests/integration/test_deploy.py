"""The deployment files: the systemd unit verifies, and the relay tells systemd when it is ready."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import TIMEOUT, Client, handshake, metrics_port, scrape_metrics
from .test_framed import Framed
from .test_tools import FWD

ROOT = Path(__file__).resolve().parents[2]


def test_the_relay_sends_ready_to_systemd_once_listening(start_server, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(TIMEOUT)
        server = start_server(env={"NOTIFY_SOCKET": path})
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1") and f"MAINPID={server.proc.pid}" in ready
        server.wait_for_log("listening")  # it came after the listeners were up
        server.proc.terminate()
        assert listener.recv(4096) == b"STOPPING=1"
        assert server.proc.wait(TIMEOUT) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_systemd_unit_verifies(tmp_path):
    # The unit as shipped, with ExecStart pointing at this checkout's forwarding (verify checks it exists).
    unit = (ROOT / "deploy" / "forwarding.service").read_text()
    unit = unit.replace("/opt/forwarding/.venv/bin/forwarding", str(Path(sys.executable).parent / "forwarding"))
    path = tmp_path / "forwarding.service"
    path.write_text(unit)
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in out.stderr.splitlines() if "forwarding.service" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_drain_stops_accepting_lets_sessions_finish_then_exits_zero(start_server, tmp_path):
    admin = str(tmp_path / "admin.sock")
    server = start_server("--drain-grace", "3", "--admin-socket", admin, "--metrics", "127.0.0.1:0")
    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    idle = Framed(server, "idle")
    pending = Client(server.address)  # accepted before the drain, handshakes during it
    drain = subprocess.run([*FWD, "admin", admin, "drain"], capture_output=True, text=True, timeout=TIMEOUT)
    assert drain.returncode == 0 and "draining" in drain.stdout, drain.stderr
    event = idle.control()
    assert event == {"event": "draining", "grace": 3}
    server.wait_for_log("INFO draining")
    assert scrape_metrics(metrics_port(server))["forwarding_draining"] == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=TIMEOUT)
    pending.send_line(b'{"req":"hs1","chid":"late"}')
    pending.send_line(b'{"req":"hs3"}')
    assert pending.read_line()["rsp"] == "hs2" and pending.read_line()["result"] == "OK"
    pending.close()
    data = os.urandom(4 << 20)  # a stream that runs on through the drain: nothing lost
    threading.Thread(target=lambda: (tx.sock.sendall(data), tx.sock.shutdown(socket.SHUT_WR))).start()
    assert hashlib.sha256(rx.recv_until_eof()).digest() == hashlib.sha256(data).digest()
    rx.close()
    tx.assert_closed()
    # The idle session outlives the grace: it is closed, and says why.
    close = idle.control()
    assert close["event"] == "close" and close["code"] == "drained", close
    idle.c.assert_closed()
    assert server.proc.wait(TIMEOUT) == 0
    assert 'reason="drained"' in server.closed_line("idle")


def test_sigusr2_drains_too(start_server):
    server = start_server("--drain-grace", "30")
    server.proc.send_signal(signal.SIGUSR2)
    server.wait_for_log("INFO draining")
    assert server.proc.wait(TIMEOUT) == 0  # nothing open: it exits at once, not after the grace


def test_the_log_file_is_reopened_on_sigusr1_after_logrotate_moved_it(tmp_path):
    log = tmp_path / "relay.log"
    proc = subprocess.Popen([*FWD, "serve", "--host", "127.0.0.1", "--port", "0", "--log-file", str(log)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for_text(log, "listening")
        log.rename(tmp_path / "relay.log.1")  # what logrotate does
        proc.send_signal(signal.SIGUSR1)
        wait_for_text(log, "log file reopened")
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
        assert "stopped" in log.read_text() and "stopped" not in (tmp_path / "relay.log.1").read_text()
        assert proc.stderr is not None and proc.stderr.read() == ""  # nothing went to stderr
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for_text(path: Path, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)  # a file has nothing to wait on: poll it, within the bound


def test_blurred_addresses_in_logs_and_admin(start_server, tmp_path):
    admin = str(tmp_path / "admin.sock")
    server = start_server("--blur-addresses", "--admin-socket", admin)
    c, _ = handshake(server, "someone")
    listing = subprocess.run(
        [*FWD, "admin", admin, "sessions", "--json"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert '"peer": "127.0.0.0/24"' in listing.stdout, listing.stdout
    c.close()
    line = server.closed_line("someone")
    assert 'peer="127.0.0.0/24"' in line and "127.0.0.1" not in line
