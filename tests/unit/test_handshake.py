"""The handshake core, driven by bytes and a number for the clock."""

import json

import pytest

from forwarding.protocol.handshake import (
    NEED_DATA,
    PAUSED,
    Failed,
    HandshakeLimits,
    Hs1Received,
    Hs3Received,
    ServerHandshake,
    State,
)

LIMITS = HandshakeLimits(handshake_timeout=10.0, max_line=1024, default_idle_timeout=60.0, max_idle_timeout=600.0)


def line(obj):
    return json.dumps(obj).encode() + b"\n"


def replies(hs):
    return [json.loads(x) for x in hs.data_to_send().splitlines()]


def test_full_handshake():
    hs = ServerHandshake(LIMITS, now=0.0)
    assert hs.next_event() is NEED_DATA
    hs.receive_data(line({"req": "hs1", "chid": "a"}))
    assert hs.next_event() == Hs1Received("a")
    assert hs.next_event() is PAUSED  # the session must answer first
    hs.accept_chid("a")
    assert replies(hs) == [{"rsp": "hs2", "chid": "a"}]
    hs.receive_data(line({"req": "hs3", "recvers": ["b"], "timeout": 5}))
    assert hs.next_event() == Hs3Received(("b",), 5.0, False)
    assert hs.establish(["b"]) == b""
    assert replies(hs) == [{"rsp": "hs4", "result": "OK", "chid": "a", "timeout": 5, "online": ["b"]}]
    assert hs.state is State.ESTABLISHED
    assert hs.deadline is None
    assert hs.next_event() is PAUSED


def test_bytes_after_hs3_in_the_same_read_are_data():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(line({"req": "hs1"}) + line({"req": "hs3"}) + b"payload\n{not json")
    assert hs.next_event() == Hs1Received(None)
    hs.accept_chid("gen")
    assert isinstance(hs.next_event(), Hs3Received)
    assert hs.establish(None) == b"payload\n{not json"


def test_split_at_every_offset_gives_the_same_events():
    wire = line({"req": "hs1", "chid": "a"}) + line({"req": "hs3", "recvers": ["b"]}) + b"DATA"
    for cut in range(len(wire) + 1):
        hs = ServerHandshake(LIMITS, now=0.0)
        events = []
        for part in (wire[:cut], wire[cut:]):
            hs.receive_data(part)
            while (ev := hs.next_event()) not in (NEED_DATA, PAUSED):
                events.append(ev)
                if isinstance(ev, Hs1Received):
                    hs.accept_chid("a")
        assert events == [Hs1Received("a"), Hs3Received(("b",), 60.0, False)], cut
        assert hs.establish([]) == b"DATA"


def test_crlf_and_blank_lines_are_accepted():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(b'\r\n\n{"req":"hs1","chid":"a"}\r\n')
    assert hs.next_event() == Hs1Received("a")


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ({"req": "hs3"}, "expected hs1, got hs3"),
        ({"req": "hs2"}, 'unknown req "hs2"'),
    ],
)
def test_out_of_order_or_unknown_steps_fail(first, words):
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(line(first))
    event = hs.next_event()
    assert isinstance(event, Failed) and words in event.desc
    assert replies(hs) == [{"rsp": "hs4", "result": "FAIL", "code": "bad_request", "desc": event.desc}]
    assert hs.state is State.FAILED
    assert hs.next_event() is PAUSED


def test_hs1_twice_fails():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(line({"req": "hs1"}) + line({"req": "hs1"}))
    hs.next_event()
    hs.accept_chid("x")
    event = hs.next_event()
    assert isinstance(event, Failed) and "expected hs3, got hs1" in event.desc


def test_line_over_the_limit_fails_without_waiting_for_its_newline():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(b"{" + b" " * 2000)
    event = hs.next_event()
    assert isinstance(event, Failed) and "exceeds 1024 bytes" in event.desc


def test_deadline_and_timeout():
    hs = ServerHandshake(LIMITS, now=100.0)
    assert hs.deadline == 110.0
    assert hs.handle_timeout(109.9) is None
    event = hs.handle_timeout(110.0)
    assert isinstance(event, Failed) and "not completed within 10 s" in event.desc
    assert event.code == "handshake_timeout"
    assert replies(hs)[0]["result"] == "FAIL"


def test_idle_timeout_default_and_cap():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(line({"req": "hs1"}) + line({"req": "hs3", "timeout": 10**9}))
    hs.next_event()
    hs.accept_chid("a")
    event = hs.next_event()
    assert isinstance(event, Hs3Received) and event.timeout == 600.0
    hs2 = ServerHandshake(LIMITS, now=0.0)
    hs2.receive_data(line({"req": "hs1"}) + line({"req": "hs3"}))
    hs2.next_event()
    hs2.accept_chid("a")
    event = hs2.next_event()
    assert isinstance(event, Hs3Received) and event.timeout == 60.0


def test_answering_in_the_wrong_state_is_a_local_error():
    hs = ServerHandshake(LIMITS, now=0.0)
    with pytest.raises(RuntimeError, match="awaiting hs1, not choosing a chid"):
        hs.accept_chid("a")
    with pytest.raises(RuntimeError):
        hs.establish(None)


def test_session_can_refuse_a_chid():
    hs = ServerHandshake(LIMITS, now=0.0)
    hs.receive_data(line({"req": "hs1", "chid": "taken"}))
    hs.next_event()
    failed = hs.fail("chid 'taken' is online", "chid_in_use")
    assert failed == Failed("chid 'taken' is online", "chid_in_use")
    assert replies(hs) == [{"rsp": "hs4", "result": "FAIL", "code": "chid_in_use", "desc": "chid 'taken' is online"}]
