"""Services and visits (docs/protocol.md, section 13) on the wire, against a real server."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading

import pytest

from .conftest import TIMEOUT, Client, ServerProcess, handshake
from .test_framed import Framed


def visitor_hello(server: ServerProcess, chid: str, recvers: list[str], **hs3: object) -> Client:
    """A visitor that has sent hs1 and hs3 and read hs2; its hs4 is held until the service answers."""
    c = Client(server.address)
    c.send_json({"req": "hs1", "chid": chid})
    assert c.read_line()["rsp"] == "hs2"
    c.send_json({"req": "hs3", "recvers": recvers, **hs3})
    return c


def accept(server: ServerProcess, ticket: str, chid: str | None = None, **hs3: object) -> tuple[Client, dict]:
    c = Client(server.address)
    c.send_json({"req": "hs1", **({"chid": chid} if chid else {})})
    assert c.read_line()["rsp"] == "hs2"
    c.send_json({"req": "hs3", "accept": ticket, **hs3})
    return c, c.read_line()


def next_visit(service: Framed) -> dict[str, object]:
    event = service.control()
    assert event["event"] == "visit", event
    assert isinstance(event["ticket"], str) and len(event["ticket"]) == 22
    return event


@pytest.fixture
def relay(start_server, forwarding_path) -> ServerProcess:
    return start_server(*forwarding_path)


def test_each_visitor_gets_its_own_pair_and_bytes_flow_both_ways_intact(relay):
    office = Framed(relay, "office", service=True)
    assert office.hs4.get("online") is None
    visitors, answers = [], []
    for i in range(3):
        v = visitor_hello(relay, f"v{i}", ["office"])
        event = next_visit(office)
        assert event["chid"] == f"v{i}"
        a, hs4 = accept(relay, event["ticket"])
        assert hs4["result"] == "OK" and hs4["peer"] == f"v{i}" and hs4["online"] == [f"v{i}"], hs4
        vhs4 = v.read_line()
        assert vhs4["result"] == "OK" and vhs4["peer"] == hs4["chid"] and vhs4["online"] == [hs4["chid"]], vhs4
        visitors.append(v)
        answers.append(a)
    blobs = [os.urandom(2 << 20) for _ in range(3)]
    # Each visitor's bytes reach only its own answering session, and the other way round.
    senders = [threading.Thread(target=v.sock.sendall, args=(b,)) for v, b in zip(visitors, blobs, strict=True)]
    for t in senders:
        t.start()
    for a, b in zip(answers, blobs, strict=True):
        assert hashlib.sha256(a.recv_exactly(len(b))).digest() == hashlib.sha256(b).digest()
    for t in senders:
        t.join(TIMEOUT)
    for i, (v, a) in enumerate(zip(visitors, answers, strict=True)):
        a.sock.sendall(f"answer {i}".encode())
        assert v.recv_exactly(8) == f"answer {i}".encode()
    # The half-close passes through, and closing one end ends the other (hangup both ways).
    v, a = visitors[0], answers[0]
    v.sock.shutdown(socket.SHUT_WR)
    assert a.recv_until_eof() == b""
    a.sock.sendall(b"last words")
    a.sock.shutdown(socket.SHUT_WR)
    assert v.recv_until_eof() == b"last words"
    # A reset (not a FIN, which is a half-close) takes the answering end offline.
    answers[1].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    answers[1].sock.close()
    visitors[1].assert_closed()
    assert 'reason="peer_left"' in relay.closed_line("v1")
    # The service saw none of this data.
    office.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        office.frame()


def test_a_refused_visit_gets_fail_with_the_service_reason(server):
    office = Framed(server, "office", service=True)
    v = visitor_hello(server, "mallory", ["office"])
    event = next_visit(office)
    office.sock.sendall(office_command(office, "refuse", ticket=event["ticket"], desc="not on the allow-list"))
    assert office.control() == {"id": office.next_id - 1, "ok": True}
    fail = v.read_line()
    assert fail["result"] == "FAIL" and fail["code"] == "refused", fail
    assert fail["desc"] == 'service "office" refused the visit: not on the allow-list'
    v.assert_closed()
    assert 'reason="visit_refused"' in server.closed_line("mallory")
    # The ticket is spent: neither a second refusal nor an answer can use it.
    office.sock.sendall(office_command(office, "refuse", ticket=event["ticket"]))
    reply = office.control()
    assert reply["ok"] is False and "no visit" in reply["desc"], reply
    a, hs4 = accept(server, event["ticket"])
    assert hs4["result"] == "FAIL" and "no visit is waiting" in hs4["desc"], hs4


def office_command(office: Framed, cmd: str, **fields: object) -> bytes:
    from forwarding.protocol.frames import control_frame

    ident = office.next_id
    office.next_id += 1
    return control_frame({"id": ident, "cmd": cmd, **fields})


def test_an_unanswered_visit_times_out_and_a_departing_service_fails_its_visits(start_server):
    server = start_server("--handshake-timeout", "1")
    office = Framed(server, "office", service=True)
    v = visitor_hello(server, "late", ["office"])
    next_visit(office)
    fail = v.read_line()
    assert fail["code"] == "handshake_timeout" and fail["desc"] == 'service "office" did not answer within 1 s'
    v2 = visitor_hello(server, "stranded", ["office"])
    next_visit(office)
    office.sock.close()
    fail = v2.read_line()
    assert fail["code"] == "refused" and fail["desc"] == 'service "office" went offline before answering', fail


def test_a_service_is_not_a_receiver(server):
    office = Framed(server, "office", service=True)
    # A broadcaster's bytes never reach it; a session that names it with others is refused.
    b, _ = handshake(server, "shouter")
    b.sock.sendall(b"junk for everyone")
    c = visitor_hello(server, "both", ["office", "shouter"])
    fail = c.read_line()
    assert fail["code"] == "bad_request" and "a visit names the service alone" in fail["desc"], fail
    # A framed session cannot move its recvers onto a service.
    f = Framed(server, "mover", ["shouter"])
    f.sock.sendall(office_command(f, "recvers", recvers=["office"]))
    reply = f.control()
    assert reply["ok"] is False and '"office" is a service' in reply["desc"], reply
    # A service sends no data: a data frame from it is a malformed frame.
    office.sock.sendall(b"\x01\x00\x00\x00\x00\x00\x00\x02hi")
    event = office.control()
    assert event["event"] == "close" and event["code"] == "bad_frame" and "sends no data" in event["desc"], event
    office.c.assert_closed()


def test_service_and_accept_are_checked_at_hs3(server):
    for hs3, words in [
        ({"service": True}, '"mode": "framed"'),
        ({"service": True, "mode": "framed", "recvers": ["x"]}, 'no \\"recvers\\"'),
        ({"service": "yes", "mode": "framed"}, "true or false"),
        ({"accept": 5}, "ticket"),
        ({"accept": "abc", "recvers": ["x"]}, "answers a visit"),
    ]:
        c = Client(server.address)
        c.send_json({"req": "hs1"})
        c.read_line()
        c.send_json({"req": "hs3", **hs3})
        fail = c.read_line()
        assert fail["result"] == "FAIL" and fail["code"] == "bad_request", (hs3, fail)
        assert words.replace("\\", "") in fail["desc"], (hs3, fail)


def test_a_waiting_visitor_becomes_a_visit_when_the_service_comes_online(server):
    v = visitor_hello(server, "early", ["office"], wait=True)
    office = Framed(server, "office", service=True)
    event = next_visit(office)
    assert event["chid"] == "early"
    a, hs4 = accept(server, event["ticket"])
    assert v.read_line()["peer"] == hs4["chid"]
    # The control session may leave: the visit's pair goes on.
    office.sock.close()
    v.sock.sendall(b"still here")
    assert a.recv_exactly(10) == b"still here"


def test_unanswered_visits_per_service_are_bounded(start_server):
    server = start_server("--max-waiting-visits", "2")
    office = Framed(server, "office", service=True)
    held = [visitor_hello(server, f"v{i}", ["office"]) for i in range(2)]
    for _ in held:
        next_visit(office)
    over = visitor_hello(server, "v2", ["office"])
    fail = over.read_line()
    assert fail["code"] == "refused" and "2 visitors waiting" in fail["desc"], fail


def test_the_ends_of_a_visit_take_bytes_only_from_each_other(server):
    office = Framed(server, "office", service=True)
    v = visitor_hello(server, "alice", ["office"])
    a, hs4 = accept(server, next_visit(office)["ticket"])
    v.read_line()
    # Someone who names either end, or broadcasts, cannot inject into the pair.
    for target in (["alice"], [str(hs4["chid"])], None):
        intruder, _ = handshake(server, None, target)
        intruder.sock.sendall(b"junk")
        intruder.sock.shutdown(socket.SHUT_WR)
        intruder.assert_closed()
    v.sock.sendall(b"from alice")
    a.sock.sendall(b"to alice")
    assert a.recv_exactly(10) == b"from alice"
    assert v.recv_exactly(8) == b"to alice"
    v.sock.shutdown(socket.SHUT_WR)
    assert a.recv_until_eof() == b""
    a.sock.close()
    v.assert_closed()
    assert "dropped=8" in server.closed_line("alice")  # two intruders' 4 bytes each, counted
