import json

import pytest

from forwarding.protocol.messages import (
    MAX_RECVERS,
    HandshakeError,
    Hs1,
    Hs3,
    encode,
    hs4_fail,
    hs4_ok,
    parse_request,
)


def test_hs1_with_and_without_chid():
    assert parse_request(b'{"req":"hs1","chid":"ch0"}') == Hs1("ch0")
    assert parse_request(b'{"req":"hs1"}') == Hs1(None)
    assert parse_request(b'{"req":"hs1","chid":""}') == Hs1(None)
    assert parse_request(b'{"req":"hs1","chid":null}') == Hs1(None)


def test_hs3_defaults_to_broadcast_and_server_timeout():
    assert parse_request(b'{"req":"hs3"}') == Hs3(recvers=None, timeout=None, wait=False)
    assert parse_request(b'{"req":"hs3","recvers":[]}') == Hs3(recvers=None, timeout=None, wait=False)


def test_hs3_fields():
    hs3 = parse_request(b'{"req":"hs3","recvers":["b","c","b"],"timeout":30,"wait":true}')
    assert hs3 == Hs3(recvers=("b", "c"), timeout=30.0, wait=True)


def test_unknown_fields_are_ignored():
    assert parse_request(b'{"req":"hs1","chid":"a","future":1}') == Hs1("a")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{nope", "not valid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'"hs1"', "must be a JSON object"),
        (b"{}", 'no "req"'),
        (b'{"req":"hs9"}', 'unknown req "hs9"'),
        (b'{"req":5}', '"req" must be a string'),
        (b'{"req":"hs1","chid":5}', '"chid" must be a string'),
        (b'{"req":"hs1","chid":"a\\u0000"}', "control"),
        (b'{"req":"hs1","chid":"' + b"x" * 200 + b'"}', "limit is 128"),
        (b'{"req":"hs3","recvers":"b"}', "list of chids"),
        (b'{"req":"hs3","recvers":[1]}', "list of strings"),
        (b'{"req":"hs3","recvers":["a b"]}', "in recvers"),
        (b'{"req":"hs3","timeout":"10"}', "number of seconds"),
        (b'{"req":"hs3","timeout":true}', "number of seconds"),
        (b'{"req":"hs3","timeout":0}', "positive"),
        (b'{"req":"hs3","timeout":-1}', "positive"),
        (b'{"req":"hs3","timeout":1e999}', "positive"),
        (b'{"req":"hs3","wait":"yes"}', '"wait" must be true or false'),
        (b'{"req":"hs3","mode":"streamed"}', '"mode" must be "raw" or "framed"'),
        (b'{"req":"hs3","mode":1}', '"mode" must be "raw" or "framed"'),
        (b"[" * 100000, "not valid JSON"),  # deep nesting must not crash the parser
    ],
)
def test_bad_requests_raise_with_a_desc(line, words):
    with pytest.raises(HandshakeError) as info:
        parse_request(line)
    assert words in info.value.desc


def test_too_many_recvers():
    line = json.dumps({"req": "hs3", "recvers": [f"c{i}" for i in range(MAX_RECVERS + 1)]}).encode()
    with pytest.raises(HandshakeError, match="limit is 1024"):
        parse_request(line)


def test_unknown_req_is_quoted_and_cut_short():
    with pytest.raises(HandshakeError) as info:
        parse_request(json.dumps({"req": "x" * 100 + '"\n'}).encode())
    assert len(info.value.desc) < 80 and "\n" not in info.value.desc


def test_replies_are_one_compact_line():
    assert encode(hs4_fail("bad")) == b'{"rsp":"hs4","result":"FAIL","code":"bad_request","desc":"bad"}\n'
    assert (
        encode(hs4_ok("a", 3600.0, ["b"])) == b'{"rsp":"hs4","result":"OK","chid":"a","timeout":3600,"online":["b"]}\n'
    )
    assert encode(hs4_ok("a", 1.5, None)) == b'{"rsp":"hs4","result":"OK","chid":"a","timeout":1.5}\n'


def test_hs3_mode_and_the_framed_hs4():
    assert parse_request(b'{"req":"hs3"}').framed is False
    assert parse_request(b'{"req":"hs3","mode":"raw"}').framed is False
    assert parse_request(b'{"req":"hs3","mode":"framed"}').framed is True
    assert "max_frame" not in hs4_ok("a", 60, None)
    assert hs4_ok("a", 60, None, max_frame=65536) == {
        "rsp": "hs4", "result": "OK", "chid": "a", "timeout": 60, "mode": "framed", "max_frame": 65536,
    }  # fmt: skip


def test_null_means_absent_for_every_optional_hs3_field():
    line = b'{"req":"hs3","recvers":null,"timeout":null,"wait":null,"hangup":null,"mode":null,"challenge":null}'
    assert parse_request(line) == Hs3(recvers=None, timeout=None, wait=False)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'{"req":"hs1","req":"hs3"}', "names a field twice"),
        (b'{"req":"hs3","recvers":["a"],"recvers":null}', "names a field twice"),
        (b'{"req":"hs3","timeout":' + b"9" * 5000 + b"}", "not valid JSON"),  # past Python's int-string limit
        (b'{"req":"hs3","timeout":1' + b"0" * 400 + b"}", "finite"),  # an int no float can hold
        (b'{"req":"hs3","timeout":1e400}', "finite"),
        (b'{"req":"hs3","timeout":NaN}', "finite"),
    ],
)
def test_duplicate_keys_and_huge_numbers_are_refused_with_a_desc(line, words):
    with pytest.raises(HandshakeError, match=words):
        parse_request(line)
