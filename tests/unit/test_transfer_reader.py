"""The receiving side of ``forwarding recv`` reassembles plaintext however reads split it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarding.tools.common import Codec
from forwarding.tools.transfer import _Reader

KEY = bytes(range(32))


def reader_over(wire: bytes, cuts: list[int], key: bytes | None) -> _Reader:
    """A reader whose channel returns ``wire`` in pieces ending at ``cuts``, then EOF."""
    bounds = sorted({c for c in cuts if 0 < c < len(wire)}) + [len(wire)]
    pieces = [wire[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
    pieces.reverse()
    return _Reader(lambda _n: pieces.pop() if pieces else b"", Codec(key))


def drain(reader: _Reader) -> bytes:
    out = bytearray()
    while chunk := reader.some(1 << 20):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_a_read_that_ends_inside_a_sealed_record_is_not_taken_for_eof(key):
    enc = Codec(key)
    body = os.urandom(3000)
    wire = enc.outgoing(b'{"name":"f","size":3000}\n') + enc.outgoing(body) + enc.outgoing_end()
    # One byte per read: most reads end inside a record and yield no plaintext.
    reader = reader_over(wire, list(range(len(wire))), key)
    assert reader.line() == b'{"name":"f","size":3000}'
    assert drain(reader) == body
    reader.end()


@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 6000), max_size=20))
def test_sealed_stream_reassembles_for_any_split(body, cuts):
    enc = Codec(KEY)
    wire = enc.outgoing(b"h\n") + enc.outgoing(body[:2000]) + enc.outgoing(body[2000:]) + enc.outgoing_end()
    reader = reader_over(wire, cuts, KEY)
    assert reader.line() == b"h"
    assert drain(reader) == body
    reader.end()
