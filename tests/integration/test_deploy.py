"""The deployment files: the systemd unit verifies, and the relay tells systemd when it is ready."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TIMEOUT

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
