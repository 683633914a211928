"""Server-wide behaviour: broadcast mode, shutdown, log formats, IPv6, both event loops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .conftest import TIMEOUT, Client, ServerProcess, handshake, metrics_port, scrape_metrics
from .test_forwarding import pump


def test_broadcast_mode_needs_no_handshake(start_server):
    server = start_server("--mode", "broadcast")
    a, b, c = (Client(server.address) for _ in range(3))
    server.wait_for_count("session open", 3)
    a.sock.sendall(b"from a")
    assert b.recv_exactly(6) == b"from a"
    assert c.recv_exactly(6) == b"from a"
    b.sock.sendall(b"from b")
    assert a.recv_exactly(6) == b"from b"  # a's own bytes never came back to it
    assert c.recv_exactly(6) == b"from b"


def test_broadcast_mode_forwards_handshake_json_as_plain_data(start_server):
    server = start_server("--mode", "broadcast")
    a, b = Client(server.address), Client(server.address)
    server.wait_for_count("session open", 2)
    a.sock.sendall(b'{"req":"hs1"}\n')
    assert b.recv_exactly(14) == b'{"req":"hs1"}\n'


def test_sigterm_closes_sessions_and_exits_zero():
    server = ServerProcess()
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    a.sock.sendall(b"last words")
    assert b.recv_exactly(10) == b"last words"
    server.proc.send_signal(signal.SIGTERM)
    a.assert_closed()
    b.assert_closed()
    assert server.proc.wait(TIMEOUT) == 0
    log = "\n".join(server.lines)
    assert 'reason="shutdown"' in log and "stopped" in log


def test_sigint_exits_zero_too():
    server = ServerProcess()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(TIMEOUT) == 0


def test_json_logs_carry_the_session_fields(start_server):
    server = start_server("--log-format", "json")
    a, _ = handshake(server, "j", [])
    a.close()
    m = server.wait_for_log(r'^\{.*"msg": "session closed".*\}$')
    record = json.loads(m.group(0))
    assert record["chid"] == "j" and record["reason"] == "client_closed"
    assert set(record) >= {"ts", "level", "peer", "in", "out", "dropped", "duration"}


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_listener(start_server):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("::1 not available")
    server = start_server("--host", "::1")
    assert server.host == "::1"
    a, _ = handshake(server, "v6a", ["v6b"])
    b, _ = handshake(server, "v6b", ["v6a"])
    a.sock.sendall(b"over ipv6")
    assert b.recv_exactly(9) == b"over ipv6"
    assert 'peer="[::1]:' in server.wait_for_log(r'session open chid="v6a".*').group(0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_event_loops_forward_and_apply_backpressure(start_server, loop):
    server = start_server("--loop", loop)
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"], wait=True)
    data = os.urandom(32 << 20)
    t = pump(a.sock, data)
    # b reads in small pieces, so the relay must pause a over and over.
    got = bytearray()
    while len(got) < len(data):
        got += b.sock.recv(16 * 1024)
    t.join(TIMEOUT)
    assert got == data
    assert server.rss_kib() < 80 * 1024


def test_prometheus_metrics_count_sessions_bytes_and_reasons(start_server):
    server = start_server("--metrics", "127.0.0.1:0")
    port = metrics_port(server)

    def scrape() -> dict[str, float]:
        return scrape_metrics(port)

    rx, _ = handshake(server, "rx", ["tx"])
    tx, _ = handshake(server, "tx", ["rx"])
    tx.sock.sendall(b"x" * 1000)
    assert rx.recv_exactly(1000) == b"x" * 1000
    framed, _ = handshake(server, "fr", [], mode="framed")
    pending = Client(server.address)  # connected, no handshake yet
    deadline = time.monotonic() + TIMEOUT
    while (live := scrape())["forwarding_connections"] < 4:  # the accept may still be on its way
        assert time.monotonic() < deadline, live
    assert live["forwarding_connections"] == 4
    assert live['forwarding_sessions{mode="raw"}'] == 2
    assert live['forwarding_sessions{mode="framed"}'] == 1
    assert live["forwarding_received_bytes_total"] == 1000
    assert live["forwarding_sent_bytes_total"] == 1000
    assert live["forwarding_spliced_sessions"] == 0  # 1000 bytes is no stream
    # The process's own figures, beside the relay's: descriptors (4 clients, listeners, ...), memory, CPU.
    assert live["process_open_fds"] >= 4 and live["process_max_fds"] >= live["process_open_fds"]
    assert live["process_resident_memory_bytes"] > 1 << 20 and "process_cpu_seconds_total" in live
    ghost, _ = handshake(server, "ghost", ["nobody"])
    ghost.sock.sendall(b"lost")
    ghost.sock.shutdown(socket.SHUT_WR)
    ghost.assert_closed()
    server.closed_line("ghost")
    Client(server.address).send_line(b"not json")
    server.wait_for_log('reason="handshake_failed"')
    after = scrape()
    assert after['forwarding_sessions_closed_total{reason="client_closed"}'] == 1
    assert after['forwarding_sessions_closed_total{reason="handshake_failed"}'] == 1
    assert after["forwarding_dropped_bytes_total"] == 4
    assert after["forwarding_connections_accepted_total"] == 6
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=TIMEOUT)
    assert err.value.code == 404
    framed.close()
    pending.close()


def test_a_second_relay_on_a_taken_port_or_admin_socket_says_so_and_leaves_the_first_alone(start_server, tmp_path):
    admin = str(tmp_path / "admin.sock")
    first = start_server("--admin-socket", admin)
    serve = [sys.executable, "-m", "forwarding", "serve", "--host", "127.0.0.1"]
    for extra in (["--port", str(first.port)], ["--port", "0", "--admin-socket", admin]):
        second = subprocess.run(serve + extra, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 1, second.stderr
        assert "forwarding serve: cannot start:" in second.stderr and "Traceback" not in second.stderr
    assert "belongs to a running relay" in second.stderr
    with socket.socket(socket.AF_UNIX) as sock:  # the first relay's admin socket still answers
        sock.settimeout(TIMEOUT)
        sock.connect(admin)
        sock.sendall(b'{"cmd": "sessions"}\n')
        assert json.loads(sock.makefile("rb").readline())["ok"] is True
    handshake(first, "still-up", [])


def test_an_open_relay_beyond_loopback_says_so_once_at_start(start_server):
    open_relay = start_server("--host", "0.0.0.0")
    line = open_relay.wait_for_log("WARNING open to anyone.*").group(0)
    assert 'addresses="0.0.0.0:' in line and "--secret" in line
    quiet = [start_server(), start_server("--host", "0.0.0.0", "--secret", "s")]  # loopback; a secret
    for server in quiet:
        server.wait_for_log("listening")
        assert not any("open to anyone" in line for line in server.lines), server.lines
