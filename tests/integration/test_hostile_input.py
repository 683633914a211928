"""Hypothesis against the live server: any bytes, any JSON; it answers or closes, and keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarding.protocol.frames import CONTROL, HEADER, FrameParser, control_frame, data_frame

from .conftest import ServerProcess, handshake

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)
messages = st.fixed_dictionaries(
    {"req": st.sampled_from(["hs1", "hs3", "hs2", "hs4", ""]) | json_values},
    optional={"chid": json_values | st.text(max_size=140), "recvers": json_values, "timeout": json_values},
)
json_lines = st.lists(messages, min_size=1, max_size=3).map(
    lambda ms: b"".join(json.dumps(m).encode() + b"\n" for m in ms)
)
wires = st.binary(max_size=2000) | json_lines | st.tuples(json_lines, st.binary(max_size=200)).map(b"".join)


@pytest.fixture(scope="module")
def live() -> Iterator[ServerProcess]:
    server = ServerProcess("--handshake-timeout", "5")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in "\n".join(server.lines)


def exchange(server: ServerProcess, wire: bytes) -> bytes:
    with socket.create_connection(server.address, timeout=10) as s:
        s.sendall(wire)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire=wires)
def test_any_input_gets_replies_or_a_close(live, wire):
    replies = exchange(live, wire)
    lines = replies.split(b"\n")
    # Only whole JSON reply lines come back, then the server closes; forwarded data could
    # follow an OK hs4, but nobody else is connected to send any.
    assert lines[-1] == b""
    for raw in lines[:-1]:
        reply = json.loads(raw)
        assert reply["rsp"] in ("hs2", "hs4")
        if reply.get("result") == "FAIL":
            assert reply["desc"]


def test_server_still_serves_after_the_onslaught(live):
    a, _ = handshake(live, "after-a", ["after-b"])
    b, _ = handshake(live, "after-b", ["after-a"])
    a.sock.sendall(b"alive")
    assert b.recv_exactly(5) == b"alive"


command_names = st.sampled_from(["recvers", "online", "ping", "subscribe", "close"])
commands = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "cmd": command_names | json_values,
        "recvers": json_values,
        "presence": json_values,
        "reason": json_values,
    },
)
frames = st.one_of(
    st.binary(max_size=300),
    commands.map(lambda c: control_frame(c)),
    st.binary(max_size=200).map(data_frame),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)).map(
        lambda h: HEADER.pack(*h)
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire=st.lists(frames, max_size=5).map(b"".join))
def test_any_bytes_in_framed_mode_get_frames_or_a_close(live, wire):
    hs = b'{"req":"hs1"}\n{"req":"hs3","mode":"framed"}\n'
    replies = exchange(live, hs + wire)
    lines = replies.split(b"\n", 2)
    assert json.loads(lines[0])["rsp"] == "hs2" and json.loads(lines[1])["result"] == "OK"
    # What follows hs4 is well-formed frames from the server: replies, events, or the close reason.
    for frame in FrameParser(1 << 20, allow_chid=True).feed(lines[2]):
        assert frame.kind == CONTROL
        msg = json.loads(bytes(frame.payload))
        # (presence events can only concern the sessions of earlier examples)
        assert "id" in msg or msg.get("event") in ("close", "online", "offline"), msg
    # ... and the server still serves.
    c, _ = handshake(live, None, [])
    c.close()
