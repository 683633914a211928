"""Rate caps and byte quotas (docs/operations.md, "Caps and quotas"), on the ordinary and the spliced path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
import time

import pytest

from forwarding.protocol.frames import data_frame

from .conftest import TIMEOUT, Client, ServerProcess, handshake, metrics_port, scrape_metrics
from .test_framed import Framed

RATE = 2 << 20  # bytes per second
STREAM = 6 << 20  # three seconds' worth


class Arrivals:
    """Reads a receiver to its end, noting when each byte arrived."""

    def __init__(self, client: Client, expected: int) -> None:
        self.client = client
        self.expected = expected
        self.marks: list[tuple[float, int]] = []
        self.digest = hashlib.sha256()
        self.total = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sock = self.client.sock
        sock.settimeout(3 * TIMEOUT)
        if self.client.rest:
            self._got(self.client.rest)
        while self.total < self.expected and (chunk := sock.recv(1 << 20)):
            self._got(chunk)

    def _got(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.digest.update(chunk)
        self.marks.append((time.monotonic(), self.total))

    def join(self) -> None:
        self.thread.join(4 * TIMEOUT)
        assert not self.thread.is_alive()


def steady_rate(marks: list[tuple[float, int]], skip: int = 1 << 20) -> float:
    """Bytes per second after the first ``skip`` bytes: the burst a bucket allows at the start is left out."""
    start = next((t, n) for t, n in marks if n >= skip)
    end = marks[-1]
    return (end[1] - start[1]) / (end[0] - start[0])


def send_in_thread(client: Client, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=client.sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def test_a_session_rate_cap_paces_the_sender_to_the_cap_and_loses_nothing(start_server, forwarding_path):
    server = start_server("--rate-per-session", str(RATE), "--log-level", "debug", "--metrics", "127.0.0.1:0",
                          *forwarding_path)  # fmt: skip
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    data = os.urandom(STREAM)
    arrivals = Arrivals(b, len(data))
    send_in_thread(a, data).join(4 * TIMEOUT)
    arrivals.join()
    assert arrivals.total == len(data) and arrivals.digest.digest() == hashlib.sha256(data).digest()
    assert steady_rate(arrivals.marks) == pytest.approx(RATE, rel=0.1)
    if "--no-splice" not in forwarding_path:
        server.wait_for_log(r'splicing chid="a" recver="b"')  # the cap held on the spliced path
    metrics = scrape_metrics(metrics_port(server))
    assert metrics["forwarding_rate_limit_holds_total"] > 0
    # Paced, not punished: about as long as the stream takes at the cap, less the first burst.
    assert metrics["forwarding_rate_limit_held_seconds_total"] == pytest.approx(STREAM / RATE, rel=0.2)


def test_an_address_rate_cap_is_shared_by_all_its_sessions(start_server, forwarding_path):
    server = start_server("--rate-per-ip", str(RATE), *forwarding_path)
    pairs = []
    for i in range(2):
        b, _ = handshake(server, f"b{i}", [f"a{i}"])
        a, _ = handshake(server, f"a{i}", [f"b{i}"])
        pairs.append((a, b))
    data = os.urandom(STREAM // 2)
    arrivals = [Arrivals(b, len(data)) for _, b in pairs]
    senders = [send_in_thread(a, data) for a, _ in pairs]
    for t in senders:
        t.join(4 * TIMEOUT)
    for r in arrivals:
        r.join()
        assert r.total == len(data) and r.digest.digest() == hashlib.sha256(data).digest()
    # The two streams together, in arrival order, go at the one cap.
    merged, totals = [], [0, 0]
    for t, i, n in sorted((t, i, n) for i, r in enumerate(arrivals) for t, n in r.marks):
        totals[i] = n
        merged.append((t, sum(totals)))
    assert steady_rate(merged) == pytest.approx(RATE, rel=0.1)


def closed_fields(server: ServerProcess, chid: str) -> dict[str, str]:
    line = server.closed_line(chid)
    return dict(re.findall(r'(\w+)="?([^" ]*)"?', line))


def test_a_chid_quota_ends_the_stream_at_its_last_byte_and_refuses_the_next_handshake(start_server, forwarding_path):
    quota = 1 << 20
    server = start_server("--quota-per-chid", str(quota), "--quota-period", "hour", "--metrics", "127.0.0.1:0",
                          *forwarding_path)  # fmt: skip
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    data = os.urandom(quota + (256 << 10))
    sender = send_in_thread(a, data)
    got = b.recv_until_eof()  # a's end reaches b as the end of its stream
    assert got == data[:quota]
    sender.join(TIMEOUT)
    a.assert_closed()  # the relay waits for our FIN, reading and discarding, then logs the close
    fields = closed_fields(server, "a")
    assert fields["reason"] == "quota_exceeded" and fields["in"] == str(quota), fields
    assert fields["discarded"] == str(len(data) - quota), fields
    assert "has sent its quota of 1048576 bytes this hour" in server.closed_line("a")
    again = Client(server.address)
    again.send_json({"req": "hs1", "chid": "a"})
    assert again.read_line()["rsp"] == "hs2"
    again.send_json({"req": "hs3", "recvers": ["b"]})
    fail = again.read_line()
    assert fail["result"] == "FAIL" and fail["code"] == "quota_exceeded", fail
    assert re.fullmatch(r'chid "a" has sent its quota of 1048576 bytes this hour; it renews at \d\d:00 UTC',
                        str(fail["desc"])), fail  # fmt: skip
    again.assert_closed()
    c, _ = handshake(server, "c", ["b"])  # another chid from the same address is not concerned
    c.sock.sendall(b"still here")
    metrics = scrape_metrics(metrics_port(server))
    assert metrics['forwarding_quota_cuts_total{scope="chid"}'] == 1
    assert metrics['forwarding_quota_refusals_total{scope="chid"}'] == 1
    assert metrics['forwarding_sessions_closed_total{reason="quota_exceeded"}'] == 1


def test_an_address_quota_counts_every_session_of_the_address(start_server, forwarding_path):
    quota = 1 << 20
    server = start_server("--quota-per-ip", str(quota), *forwarding_path)
    b, _ = handshake(server, "b", [])
    first = os.urandom(600 << 10)
    a1, _ = handshake(server, "a1", ["b"])
    a1.sock.sendall(first)  # a1 stays open: its end would be the end of b's stream (5.1)
    assert b.recv_exactly(len(first)) == first
    a2, _ = handshake(server, "a2", ["b"])
    second = os.urandom(600 << 10)
    send_in_thread(a2, second).join(TIMEOUT)
    assert b.recv_exactly(quota - len(first)) == second[: quota - len(first)]
    a2.assert_closed()
    fields = closed_fields(server, "a2")
    assert fields["reason"] == "quota_exceeded" and fields["in"] == str(quota - len(first)), fields
    again = Client(server.address)
    again.send_json({"req": "hs1"})
    again.read_line()
    again.send_json({"req": "hs3"})
    fail = again.read_line()
    assert fail["code"] == "quota_exceeded" and "source address 127.0.0.1 has sent its quota" in str(fail["desc"])


def test_a_framed_session_hears_why_its_quota_ended_it(start_server):
    server = start_server("--quota-per-chid", "100K")
    b = Framed(server, "b", [])
    a = Framed(server, "a", ["b"])
    chunk = os.urandom(30_000)
    for _ in range(4):  # 4 x (30,000 + an 8-byte header): the fourth frame crosses 102,400
        a.sock.sendall(data_frame(chunk))
    event = a.control()
    assert event["event"] == "close" and event["code"] == "quota_exceeded", event
    assert "has sent its quota of 102400 bytes this day" in str(event["desc"])
    for _ in range(3):
        assert b.message() == ("a", chunk)  # the frames within the quota arrive whole
    assert b.event() == {"event": "eof", "chid": "a"}


def test_a_reload_sets_quotas_for_new_sessions_only(start_server, tmp_path, forwarding_path):
    config = tmp_path / "relay.toml"
    config.write_text("quota-per-chid = 0\n")
    server = start_server("--config", str(config), *forwarding_path)
    b, _ = handshake(server, "b", ["old", "new"])
    old, _ = handshake(server, "old", ["b"])
    config.write_text("quota-per-chid = 1000\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(r'reloaded changed="quotas"')
    new, _ = handshake(server, "new", ["b"])
    old.sock.sendall(bytes(5000))
    assert b.recv_exactly(5000) == bytes(5000)  # the old session keeps no quota
    new.sock.sendall(b"x" * 1500)
    assert b.recv_exactly(1000) == b"x" * 1000
    new.assert_closed()
    assert closed_fields(server, "new")["reason"] == "quota_exceeded"


def test_a_websocket_sender_is_paced_and_cut_by_its_quota_as_a_tcp_one(start_server):
    from .test_websocket import ws_join

    quota = 3 << 20
    server = start_server("--ws-port", "0", "--rate-per-session", str(RATE), "--quota-per-chid", str(quota))
    b, _ = handshake(server, "b", ["web"])
    ws, _ = ws_join(server, "web", ["b"])
    data = os.urandom(quota + (1 << 20))
    arrivals = Arrivals(b, quota)

    def send() -> None:
        for i in range(0, len(data), 64 << 10):
            try:
                ws.send(data[i : i + (64 << 10)])
            except Exception:  # the relay ended the session at the quota
                return

    threading.Thread(target=send, daemon=True).start()
    arrivals.join()
    assert arrivals.total == quota and arrivals.digest.digest() == hashlib.sha256(data[:quota]).digest()
    assert steady_rate(arrivals.marks) == pytest.approx(RATE, rel=0.1)  # counted in message payload bytes
    line = server.wait_for_log(r'session closed chid="web".*').group(0)
    assert 'reason="quota_exceeded"' in line and f"in={quota} " in line, line


def test_a_paced_sender_that_is_killed_leaves_nothing_behind(start_server, forwarding_path):
    import socket
    import struct

    server = start_server("--rate-per-ip", str(RATE), "--quota-per-ip", "1G", "--metrics", "127.0.0.1:0",
                          *forwarding_path)  # fmt: skip
    b, _ = handshake(server, "b", ["a"])
    a, _ = handshake(server, "a", ["b"])
    data = os.urandom(STREAM)
    arrivals = Arrivals(b, len(data))

    def send() -> None:
        with contextlib.suppress(OSError):  # we kill the socket under it
            a.sock.sendall(data)

    threading.Thread(target=send, daemon=True).start()
    deadline = time.monotonic() + TIMEOUT
    while arrivals.total < 1 << 20:  # paced by now: the first burst is long gone
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.01)
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.sock.close()  # RST while the relay holds its reads
    line = server.closed_line("a")
    assert 'reason="reset"' in line or 'reason="client_closed"' in line, line
    b.sock.settimeout(TIMEOUT)
    arrivals.join()  # b's stream ends (a left): what it got is a prefix of what was sent
    got = arrivals.total
    assert 0 < got < len(data)
    # The address's bucket and the ledger's hold went with the last session that used them.
    b.close()
    server.closed_line("b")
    metrics = scrape_metrics(metrics_port(server))
    assert metrics["forwarding_quota_tracked"] == 1  # the address's use this day, kept; no bucket
    c, _ = handshake(server, "c", [])  # the relay goes on
    c.sock.sendall(b"still here")
