"""Any bytes at the handshake core give events or a FAIL, never an exception."""

import json

from hypothesis import given
from hypothesis import strategies as st

from forwarding.protocol.handshake import NEED_DATA, PAUSED, Failed, HandshakeLimits, Hs1Received, ServerHandshake
from forwarding.protocol.messages import HandshakeError, parse_request

LIMITS = HandshakeLimits(max_line=4096)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
requests = st.fixed_dictionaries(
    {"req": st.sampled_from(["hs1", "hs3", "hs2", "x"]) | json_values},
    optional={"chid": json_values, "recvers": json_values, "timeout": json_values, "wait": json_values},
)


def drive(hs, chunks):
    events = []
    for chunk in chunks:
        hs.receive_data(chunk)
        while (ev := hs.next_event()) not in (NEED_DATA, PAUSED):
            events.append(ev)
            if isinstance(ev, Hs1Received):
                hs.accept_chid(ev.chid or "generated")
    return events


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_never_raise(chunks):
    hs = ServerHandshake(LIMITS, now=0.0)
    events = drive(hs, chunks)
    # Once failed, nothing else happens.
    if any(isinstance(e, Failed) for e in events):
        assert isinstance(events[-1], Failed)
    for reply in hs.data_to_send().splitlines():
        assert json.loads(reply)["rsp"] in ("hs2", "hs4")


@given(st.lists(requests, min_size=1, max_size=4), st.data())
def test_arbitrary_json_gives_the_same_events_however_it_is_split(msgs, data):
    wire = b"".join(json.dumps(m).encode() + b"\n" for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    whole = drive(ServerHandshake(LIMITS, now=0.0), [wire])
    split = drive(ServerHandshake(LIMITS, now=0.0), chunks)
    assert whole == split


@given(json_values)
def test_parse_request_raises_only_handshake_error(value):
    try:
        parse_request(json.dumps(value).encode())
    except HandshakeError as exc:
        assert exc.desc


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_encode_writes_what_json_dumps_writes(obj):
    # messages.encode keeps one C encoder instead of json.dumps' new one per call.
    from forwarding.protocol.messages import encode

    assert encode(obj) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


lines = st.one_of(
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.tuples(requests.map(json.dumps), st.text(max_size=4)).map("".join),  # a request, then maybe more
)


@given(lines, st.sampled_from(["", " ", "\t", " \r"]))
def test_parse_request_reads_json_as_json_loads_does(text, pad):
    # parse_request uses raw_decode plus a check for trailing bytes instead of json.loads.
    line = (pad + text + pad).encode()
    invalid = object()
    try:
        expected = json.loads(line)
    except ValueError:
        expected = invalid
    try:
        parse_request(line)
    except HandshakeError as exc:
        if expected is invalid:
            assert exc.desc == "handshake line is not valid JSON"
        else:  # valid JSON, refused for what it says
            assert exc.desc != "handshake line is not valid JSON"
    else:
        assert isinstance(expected, dict)
