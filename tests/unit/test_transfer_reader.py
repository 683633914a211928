"""The receiving side of ``forwarding recv`` reassembles plaintext however reads split it."""

from __future__ import annotations

import argparse
import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarding.client.framed import Ended
from forwarding.tools.common import Codec
from forwarding.tools.transfer import _Receiver

KEY = bytes(range(32))


class FakeChannel:
    """Frames from sender "alice" in pieces ending at ``cuts``, then her eof event."""

    def __init__(self, wire: bytes, cuts: list[int]) -> None:
        bounds = sorted({c for c in cuts if 0 < c < len(wire)}) + [len(wire)]
        self.items: list[tuple[str, bytes] | Ended] = [
            ("alice", wire[a:b]) for a, b in zip([0, *bounds[:-1]], bounds, strict=True)
        ]
        self.items.append(Ended("alice"))

    async def receive(self) -> tuple[str, bytes] | Ended | None:
        return self.items.pop(0) if self.items else None

    async def set_recvers(self, recvers: list[str]) -> list[str]:
        return recvers


async def read_all(wire: bytes, cuts: list[int], key: bytes | None) -> tuple[bytes, bytes]:
    args = argparse.Namespace(sender=None)
    r = _Receiver(args, FakeChannel(wire, cuts), Codec(key), Codec(key))  # type: ignore[arg-type]
    line = await r._line()
    out = bytearray()
    while chunk := await r._take(1 << 20):
        out += chunk
    return line, bytes(out)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_a_read_that_ends_inside_a_sealed_record_is_not_taken_for_eof(key):
    enc = Codec(key)
    body = os.urandom(3000)
    wire = enc.outgoing(b'{"name":"f","size":3000}\n') + enc.outgoing(body) + enc.outgoing_end()
    # One byte per read: most reads end inside a record and yield no plaintext.
    line, got = asyncio.run(read_all(wire, list(range(len(wire))), key))
    assert line == b'{"name":"f","size":3000}' and got == body


@settings(deadline=None)
@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 6000), max_size=20))
def test_sealed_stream_reassembles_for_any_split(body, cuts):
    enc = Codec(KEY)
    wire = enc.outgoing(b"h\n") + enc.outgoing(body[:2000]) + enc.outgoing(body[2000:]) + enc.outgoing_end()
    line, got = asyncio.run(read_all(wire, cuts, KEY))
    assert line == b"h" and got == body
