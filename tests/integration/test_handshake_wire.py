"""The handshake over a real socket: chids, waiting, refusals, timeouts."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from .conftest import Client, handshake


def fail_reply(c: Client, code: str | None = None) -> str:
    reply = c.read_line()
    assert reply["rsp"] == "hs4" and reply["result"] == "FAIL", reply
    if code is not None:
        assert reply["code"] == code, reply
    c.assert_closed()
    return str(reply["desc"])


def test_each_reply_is_a_single_line_readable_with_one_recv(server):
    # Seed-era clients do recv() once and json.loads() the result.
    s = socket.create_connection(server.address, timeout=10)
    s.sendall(b'{"req":"hs1","chid":"old"}\n')
    assert json.loads(s.recv(4096)) == {"rsp": "hs2", "chid": "old"}
    s.sendall(b'{"req":"hs3","recvers":["x"]}\n')
    assert json.loads(s.recv(4096))["result"] == "OK"


def test_a_chid_that_is_online_is_refused_and_the_owner_keeps_its_traffic(server):
    owner, _ = handshake(server, "dup", [])
    peer, _ = handshake(server, "peer", ["dup"])
    thief = Client(server.address)
    thief.send_json({"req": "hs1", "chid": "dup"})
    assert "is online" in fail_reply(thief, "chid_in_use")
    peer.sock.sendall(b"still mine")
    assert owner.recv_exactly(10) == b"still mine"
    server.wait_for_log(r'session closed chid="dup" .*reason="chid_in_use"')


def test_chid_is_free_again_as_soon_as_its_owner_closes(server):
    first, _ = handshake(server, "again", [])
    first.close()
    server.closed_line("again")
    second, hs4 = handshake(server, "again", [])
    assert hs4["chid"] == "again"


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"not json\n", "not valid JSON"),
        (b'{"req":"hs3"}\n', "expected hs1, got hs3"),
        (b'{"req":"bogus"}\n', "unknown req"),
        (b'{"req":"hs1","chid":7}\n', '"chid" must be a string'),
        (b'{"req":"hs1","chid":"a\\u0007b"}\n', "control"),
        (b'{"req":"hs1","chid":"' + b"c" * 129 + b'"}\n', "limit is 128"),
        (b"\xff\xff\n", "UTF-8"),
        (b"{" + b" " * (64 * 1024 + 10), "exceeds 65536 bytes"),
        (b'{"req":"hs1"}\n{"req":"hs3","recvers":"b"}\n', "list of chids"),
        (b'{"req":"hs1"}\n{"req":"hs3","timeout":-5}\n', "positive"),
    ],
)
def test_bad_input_gets_fail_with_a_desc_then_close(server, wire, words):
    bystander, _ = handshake(server, "bystander", ["talker"])
    talker, _ = handshake(server, "talker", ["bystander"])
    c = Client(server.address)
    c.sock.sendall(wire)
    if wire.startswith(b'{"req":"hs1"}'):
        assert c.read_line()["rsp"] == "hs2"
    assert words in fail_reply(c, "bad_request")
    server.wait_for_log(r"session closed .*reason=\"handshake_failed\"")
    talker.sock.sendall(b"unaffected")
    assert bystander.recv_exactly(10) == b"unaffected"


def test_handshake_timeout_closes_with_a_fail(start_server):
    server = start_server("--handshake-timeout", "0.5")
    c = Client(server.address)
    c.send_json({"req": "hs1"})
    assert c.read_line()["rsp"] == "hs2"
    assert "not completed within 0.5 s" in fail_reply(c, "handshake_timeout")
    server.wait_for_log(r"reason=\"handshake_timeout\"")


def test_silent_connection_is_closed_by_the_handshake_timeout(start_server):
    server = start_server("--handshake-timeout", "0.3")
    c = Client(server.address)
    assert "not completed" in fail_reply(c)


def test_idle_timeout_from_hs3_closes_a_quiet_session(server):
    a, hs4 = handshake(server, "quiet", [], timeout=0.5)
    assert hs4["timeout"] == 0.5
    a.assert_closed()
    assert 'reason="idle_timeout"' in server.closed_line("quiet")


def test_traffic_keeps_a_session_alive_past_its_idle_timeout(server):
    a, _ = handshake(server, "busy", ["busy-rx"], timeout=0.6)
    rx, _ = handshake(server, "busy-rx", [], timeout=30)
    # Gaps of 0.15 s (under the 0.6 s timeout) for 1.5 s in all: the passing of time
    # is what is tested here, so these sleeps are the input, not synchronisation.
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        a.sock.sendall(b"k")
        assert rx.recv_exactly(1) == b"k"
        time.sleep(0.15)
    a.sock.sendall(b"z")
    assert rx.recv_exactly(1) == b"z"
    assert not any('chid="busy"' in line and "session closed" in line for line in server.lines)


def test_server_default_and_maximum_idle_timeout(start_server):
    server = start_server("--idle-timeout", "0.4", "--max-idle-timeout", "0.8")
    a, hs4 = handshake(server, "default", [])
    assert hs4["timeout"] == 0.4
    b, hs4 = handshake(server, "capped", [], timeout=99999)
    assert hs4["timeout"] == 0.8
    a.assert_closed()
    b.assert_closed()
    assert "idle_timeout" in server.closed_line("default")
    assert "idle_timeout" in server.closed_line("capped")


def test_wait_holds_hs4_until_every_recver_is_online(server):
    waiter = Client(server.address)
    waiter.send_json({"req": "hs1", "chid": "w"})
    waiter.read_line()
    waiter.send_json({"req": "hs3", "recvers": ["p1", "p2"], "wait": True}, extra=b"early bytes")
    p1, _ = handshake(server, "p1", ["w"])
    p1.sock.sendall(b"to w before its hs4")
    p2, _ = handshake(server, "p2", [])
    hs4 = waiter.read_line()
    assert hs4["result"] == "OK" and hs4["online"] == ["p1", "p2"]
    # Bytes delivered while w waited come after its hs4, and its early bytes are forwarded.
    assert waiter.recv_exactly(19) == b"to w before its hs4"
    assert p1.recv_exactly(11) == b"early bytes"
    assert p2.recv_exactly(11) == b"early bytes"


def test_two_clients_can_wait_for_each_other(server):
    a = Client(server.address)
    a.send_json({"req": "hs1", "chid": "ma"})
    a.read_line()
    a.send_json({"req": "hs3", "recvers": ["mb"], "wait": True})
    b = Client(server.address)
    b.send_json({"req": "hs1", "chid": "mb"})
    b.read_line()
    b.send_json({"req": "hs3", "recvers": ["ma"], "wait": True})
    assert a.read_line()["online"] == ["mb"]
    assert b.read_line()["online"] == ["ma"]
    a.sock.sendall(b"hi b")
    assert b.recv_exactly(4) == b"hi b"


def test_wait_fails_when_recvers_stay_offline(start_server):
    server = start_server("--handshake-timeout", "0.5")
    c = Client(server.address)
    c.send_json({"req": "hs1", "chid": "lonely"})
    c.read_line()
    c.send_json({"req": "hs3", "recvers": ["nobody"], "wait": True})
    assert "recvers not online after 0.5 s: nobody" in fail_reply(c, "wait_timeout")
    assert "wait_timeout" in server.closed_line("lonely")
    # The chid was released with the failure.
    again, _ = handshake(server, "lonely", [])


def test_hangup_closes_a_session_when_its_recver_leaves(server):
    bound, _ = handshake(server, "bound", ["partner"], hangup=True)
    loose, _ = handshake(server, "loose", ["partner"])
    partner, _ = handshake(server, "partner", ["bound"])
    partner.sock.sendall(b"last bytes")
    assert bound.recv_exactly(10) == b"last bytes"
    partner.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    partner.close()  # a reset: gone at once (a FIN only ends its sending, 5.1)
    bound.assert_closed()
    assert 'reason="peer_left"' in server.closed_line("bound")
    # Without hangup a session outlives its partner.
    loose.sock.sendall(b"x")
    again, _ = handshake(server, "partner", ["loose"])
    loose.sock.sendall(b"still here")
    assert again.recv_exactly(10) == b"still here"


def test_hangup_must_be_a_boolean(server):
    c = Client(server.address)
    c.send_json({"req": "hs1"})
    c.read_line()
    c.send_json({"req": "hs3", "recvers": ["x"], "hangup": 1})
    assert '"hangup" must be true or false' in fail_reply(c, "bad_request")


def test_tcp_keepalive_is_on_for_every_session(server):
    """The server's end of an idle session has the keepalive timer running.

    In /proc/net/tcp an idle established socket shows timer 0 (none) without
    keepalive and 2 (keepalive) with it; 1 while sent bytes await their ACK.
    """
    c, _ = handshake(server, "kept", [])
    local = f":{server.port:04X}"
    remote = f":{c.sock.getsockname()[1]:04X}"
    deadline = time.monotonic() + 5
    while True:
        with open("/proc/net/tcp") as f:
            row = next(r.split() for r in f if r.split()[1].endswith(local) and r.split()[2].endswith(remote))
        timer = row[5].split(":")[0]
        if timer != "01" or time.monotonic() > deadline:  # wait out the hs4 ACK
            break
        time.sleep(0.01)  # poll the kernel table
    assert timer == "02", row
