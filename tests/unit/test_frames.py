"""The framed-mode core: frame parsing at any split, limits, commands, and the documented vectors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarding.protocol.frames import (
    CONTROL,
    DATA,
    Close,
    CommandError,
    EndOfStream,
    FrameError,
    FrameParser,
    Online,
    Ping,
    Refuse,
    SetRecvers,
    Subscribe,
    control_frame,
    data_frame,
    parse_command,
    parse_control,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def frames_of(parser: FrameParser, pieces: list[bytes]) -> list[tuple[int, str | None, bytes]]:
    out = []
    for piece in pieces:
        out += [(f.kind, f.chid, bytes(f.payload)) for f in parser.feed(piece)]
    return out


def test_a_stream_of_frames_split_at_every_offset_parses_the_same():
    stream = data_frame(b"hello") + control_frame({"id": 1, "cmd": "ping"}) + data_frame(b"") + data_frame(b"x" * 300)
    expected = frames_of(FrameParser(1 << 20), [stream])
    assert [k for k, _, _ in expected] == [DATA, CONTROL, DATA, DATA]
    for cut in range(1, len(stream)):
        assert frames_of(FrameParser(1 << 20), [stream[:cut], stream[cut:]]) == expected, cut
    assert frames_of(FrameParser(1 << 20), [stream[i : i + 1] for i in range(len(stream))]) == expected


def test_server_data_frames_carry_the_sender_chid():
    frame = data_frame(b"payload", b"bob")
    assert frames_of(FrameParser(1 << 20, allow_chid=True), [frame]) == [(DATA, "bob", b"payload")]


def test_a_whole_frame_in_one_read_is_not_copied():
    data = data_frame(b"abc" * 100)
    (frame,) = FrameParser(1 << 20).feed(data)
    assert isinstance(frame.payload, memoryview) and frame.payload.obj is data


@pytest.mark.parametrize(
    ("raw", "code", "text"),
    [
        (bytes([3, 0, 0, 0, 0, 0, 0, 0]), "bad_frame", "unknown frame type 3"),
        (bytes([1, 1, 0, 0, 0, 0, 0, 0]), "bad_frame", "reserved header byte"),
        (bytes([1, 0, 0, 3, 0, 0, 0, 0]) + b"bob", "bad_frame", "only the server's data frames carry a chid"),
        (bytes([1, 0, 0, 0, 0, 0x10, 0, 1]), "frame_too_large", "frame of 1048577 bytes, the limit is 1048576"),
    ],
)
def test_bad_headers_are_refused_before_any_payload_is_buffered(raw, code, text):
    parser = FrameParser(1 << 20)
    assert parser.feed(raw) == []
    assert parser.error is not None and parser.error.code == code and text in parser.error.desc


def test_an_over_limit_header_is_refused_on_its_own():
    parser = FrameParser(1000)
    assert parser.feed(bytes([1, 0, 0, 0, 0, 0, 0x03, 0xE9])) == []
    assert parser.error is not None and "frame of 1001 bytes" in parser.error.desc
    assert parser.buffered == 0


@given(st.integers(0, 5), st.data())
def test_frames_before_a_bad_header_come_out_whatever_the_segmentation(n, data):
    good = [data_frame(f"m{i}".encode()) for i in range(n)]
    stream = b"".join(good) + bytes([9, 0, 0, 0, 0, 0, 0, 0]) + data_frame(b"after")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = FrameParser(1 << 20)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += [bytes(f.payload) for f in parser.feed(stream[a:b])]
    assert got == [f"m{i}".encode() for i in range(n)]
    assert parser.error is not None and "unknown frame type 9" in parser.error.desc
    assert parser.feed(data_frame(b"later")) == []  # stopped for good


@given(st.lists(st.tuples(st.sampled_from([DATA, CONTROL]), st.binary(max_size=300)), max_size=8), st.data())
def test_any_frames_cut_anywhere_come_back_whole(frames, data):
    stream = b"".join(bytes([kind, 0, 0, 0]) + len(p).to_bytes(4, "big") + p for kind, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    got = frames_of(FrameParser(1 << 20), pieces)
    assert [(k, p) for k, _, p in got] == frames


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_frames_or_a_frame_error(blob):
    parser = FrameParser(64)
    try:
        for frame in parser.feed(blob):
            if frame.kind == CONTROL:
                try:
                    parse_command(parse_control(frame.payload))
                except CommandError:
                    pass
    except FrameError as exc:
        assert exc.code in ("bad_frame", "unknown_command")
    if parser.error is not None:
        assert parser.error.code in ("bad_frame", "frame_too_large")
    assert parser.buffered <= 8 + 64


def test_commands_parse():
    assert parse_command({"id": 1, "cmd": "recvers", "recvers": ["a", "b", "a"]}) == (1, SetRecvers(("a", "b")))
    assert parse_command({"id": 2, "cmd": "recvers", "recvers": []}) == (2, SetRecvers(None))
    assert parse_command({"id": 3, "cmd": "online"}) == (3, Online())
    assert parse_command({"id": 4, "cmd": "ping"}) == (4, Ping())
    assert parse_command({"id": 5, "cmd": "subscribe"}) == (5, Subscribe(True))
    assert parse_command({"id": 6, "cmd": "subscribe", "presence": False}) == (6, Subscribe(False))
    assert parse_command({"id": 7, "cmd": "close", "reason": "done"}) == (7, Close("done"))


@pytest.mark.parametrize(
    ("msg", "text"),
    [
        ({"id": 9, "cmd": "recvers", "recvers": "bob"}, '"recvers" must be a list'),
        ({"id": 9, "cmd": "recvers", "recvers": ["a b"]}, "in recvers"),
        ({"id": 9, "cmd": "subscribe", "presence": "yes"}, '"presence" must be true or false'),
        ({"id": 9, "cmd": "close", "reason": "x" * 300}, '"reason" must be a string'),
    ],
)
def test_bad_arguments_are_answered_not_fatal(msg, text):
    with pytest.raises(CommandError) as err:
        parse_command(msg)
    assert err.value.ident == 9 and text in err.value.desc


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"cmd": "ping"}, "bad_frame"),
        ({"id": -1, "cmd": "ping"}, "bad_frame"),
        ({"id": True, "cmd": "ping"}, "bad_frame"),
        ({"id": 1}, "bad_frame"),
        ({"id": 1, "cmd": "reboot"}, "unknown_command"),
    ],
)
def test_malformed_or_unknown_commands_end_the_session(msg, code):
    with pytest.raises(FrameError) as err:
        parse_command(msg)
    assert err.value.code == code


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b"\xff\xfe"])
def test_control_payloads_must_be_json_objects(payload):
    with pytest.raises(FrameError, match="JSON object"):
        parse_control(payload)


def vectors() -> list[dict[str, str]]:
    text = DOC.read_text()
    block = re.search(r"<!-- vectors:frames-v1 -->\s*```json\n(.*?)```", text, re.S)
    assert block, "docs/protocol.md has no frames-v1 vectors"
    return json.loads(block.group(1))


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: v["name"])
def test_documented_frame_vectors(vector):
    wire = bytes.fromhex(vector["hex"])
    parser = FrameParser(1 << 20, allow_chid=True)
    (frame,) = parser.feed(wire)
    assert frame.kind == {"data": DATA, "control": CONTROL}[vector["type"]]
    assert frame.chid == vector.get("chid")
    if frame.kind == DATA:
        assert bytes(frame.payload) == vector["payload"].encode()
        assert data_frame(vector["payload"].encode(), (vector.get("chid") or "").encode()) == wire
    else:
        assert parse_control(frame.payload) == json.loads(vector["payload"])
        assert control_frame(json.loads(vector["payload"])) == wire


def test_null_means_absent_in_commands_and_unknown_fields_are_ignored():
    assert parse_command({"id": 1, "cmd": "subscribe", "presence": None}) == (1, Subscribe(True))
    assert parse_command({"id": 2, "cmd": "close", "reason": None}) == (2, Close(None))
    assert parse_command({"id": 3, "cmd": "recvers", "recvers": None}) == (3, SetRecvers(None))
    assert parse_command({"id": 4, "cmd": "ping", "later": {"x": 1}}) == (4, Ping())
    assert parse_command({"id": 5, "cmd": "eof"}) == (5, EndOfStream())
    assert parse_command({"id": 6, "cmd": "refuse", "ticket": "t", "desc": None}) == (6, Refuse("t", None))


@pytest.mark.parametrize(
    "msg", [{"cmd": "refuse"}, {"cmd": "refuse", "ticket": ""}, {"cmd": "refuse", "ticket": "t", "desc": "x" * 257}]
)
def test_a_refuse_without_a_ticket_or_with_a_long_desc_is_answered_ok_false(msg):
    with pytest.raises(CommandError):
        parse_command({"id": 1, **msg})


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":1.0,"cmd":"ping"}',  # an id is an integer: no fraction, no exponent
        b'{"id":1e0,"cmd":"ping"}',
        b'{"id":true,"cmd":"ping"}',
        b'{"id":"1","cmd":"ping"}',
        b'{"id":9007199254740992,"cmd":"ping"}',  # 2^53
        b'{"id":' + b"9" * 5000 + b',"cmd":"ping"}',
        b'{"id":1,"id":2,"cmd":"ping"}',
    ],
)
def test_ids_that_are_not_integers_in_range_end_the_session(payload):
    with pytest.raises(FrameError) as err:
        parse_command(parse_control(payload))
    assert err.value.code == "bad_frame"
