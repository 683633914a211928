"""A bounded soak: a minute of churn, then nothing lost, corrupted or left behind.

Pairs open, move random data both ways, and end in every way a client can: by
FIN (half-close, with the answer still coming), by RST, or with the framed
close command; raw and framed, spliced and not. Afterwards the relay's open
descriptors are back to their baseline and its memory within a tolerance.

``FORWARDING_SOAK_SECONDS`` sets the length (default 60; CI runs the default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import struct
import time

from forwarding.protocol.frames import HEADER, control_frame, data_frame

from .conftest import TIMEOUT, ServerProcess

SECONDS = float(os.environ.get("FORWARDING_SOAK_SECONDS", "60"))
CONCURRENT = 24
RSS_TOLERANCE_KIB = 24 * 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def join(server: ServerProcess, chid: str, recvers: list[str], framed: bool = False):
    reader, writer = await asyncio.open_connection(*server.address)
    hs3: dict[str, object] = {"req": "hs3", "recvers": recvers, "wait": True}
    if framed:
        hs3["mode"] = "framed"
    writer.write(json.dumps({"req": "hs1", "chid": chid}).encode() + b"\n" + json.dumps(hs3).encode() + b"\n")
    assert json.loads(await reader.readline())["rsp"] == "hs2"
    hs4 = json.loads(await reader.readline())
    assert hs4["result"] == "OK", hs4
    return reader, writer


async def read_raw(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    try:
        while chunk := await reader.read(1 << 20):
            out += chunk
    except ConnectionError:
        pass
    return bytes(out)


async def read_framed(reader: asyncio.StreamReader, peer: str) -> tuple[bytes, list[str]]:
    """Data from ``peer`` until its eof event (or the end), and the events seen."""
    out = bytearray()
    events: list[str] = []
    try:
        while True:
            head = await reader.readexactly(8)
            kind, _, chid_len, length = HEADER.unpack(head)
            chid = (await reader.readexactly(chid_len)).decode()
            payload = await reader.readexactly(length)
            if kind == 1:
                assert chid == peer
                out += payload
            else:
                msg = json.loads(payload)
                events.append(msg.get("event") or "reply")
                if msg.get("event") in ("eof", "close"):
                    return bytes(out), events
    except (asyncio.IncompleteReadError, ConnectionError):
        return bytes(out), events


async def raw_pair(server: ServerProcess, n: int, ending: str) -> None:
    a, b = f"ra{n}", f"rb{n}"
    (ra, wa), (rb, wb) = await asyncio.gather(join(server, a, [b]), join(server, b, [a]))
    size = random.choice([100, 70_000, 1 << 20, 3 << 20])  # small ones stay unspliced
    da, db = os.urandom(size), os.urandom(size // 2 + 1)
    got_b = asyncio.ensure_future(read_raw(rb))
    got_a = asyncio.ensure_future(read_raw(ra))
    wa.write(da)
    await wa.drain()
    if ending == "rst":
        sock = wa.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wa.transport.abort()
        wb.write(db)
        wb.close()
        got = await asyncio.wait_for(got_b, TIMEOUT)
        assert da.startswith(got)  # a prefix of what a sent: nothing corrupted or reordered
        got_a.cancel()
        return
    wa.write_eof()  # a has finished; b answers, then finishes too
    wb.write(db)
    await wb.drain()
    assert hashlib.sha256(await asyncio.wait_for(got_b, TIMEOUT)).digest() == hashlib.sha256(da).digest()
    wb.write_eof()
    assert hashlib.sha256(await asyncio.wait_for(got_a, TIMEOUT)).digest() == hashlib.sha256(db).digest()
    wa.close()
    wb.close()


async def framed_pair(server: ServerProcess, n: int, ending: str) -> None:
    a, b = f"fa{n}", f"fb{n}"
    (ra, wa), (rb, wb) = await asyncio.gather(join(server, a, [b], framed=True), join(server, b, [a]))
    messages = [os.urandom(random.choice([0, 10, 5000, 200_000])) for _ in range(random.randint(1, 20))]
    got_b = asyncio.ensure_future(read_raw(rb))
    for m in messages:
        wa.write(data_frame(m))
    if ending == "close":
        wa.write(control_frame({"id": 1, "cmd": "close", "reason": "soak"}))
    else:
        wa.write(control_frame({"id": 1, "cmd": "eof"}))
    await wa.drain()
    want = b"".join(messages)
    if ending == "eof":
        assert await asyncio.wait_for(got_b, TIMEOUT) == want  # a's eof: b's input ends
        wb.write(b"answer")
        wb.write_eof()
        data, events = await asyncio.wait_for(read_framed(ra, b), TIMEOUT)
        assert data == b"answer" and events[-1] == "eof"
        wb.close()
    else:
        data, events = await asyncio.wait_for(read_framed(ra, b), TIMEOUT)
        assert events[-1] == "close"
        assert await asyncio.wait_for(got_b, TIMEOUT) == want  # then a's end reached b as FIN
        wb.close()
    wa.close()


async def churn(server: ServerProcess, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    done = 0
    counter = iter(range(1 << 30))

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            n = next(counter)
            kind = random.random()
            if kind < 0.6:
                await raw_pair(server, n, random.choice(["fin", "fin", "rst"]))
            else:
                await framed_pair(server, n, random.choice(["eof", "close"]))
            done += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
    return done


def test_a_minute_of_churn_loses_nothing_and_leaves_nothing_behind(start_server):
    server = start_server(
        "--splice-after", "65536", "--half-close-timeout", "5",
        "--handshake-rate", "100000", "--handshake-burst", "100000",
    )  # fmt: skip
    pid = server.proc.pid
    asyncio.run(churn(server, min(5.0, SECONDS / 6)))  # warm up: the allocator's pools, imports
    time.sleep(1)  # let the last closes land before the baseline (a bound, checked below)
    base_fds, base_rss = open_fds(pid), server.rss_kib()
    pairs = asyncio.run(churn(server, SECONDS))
    assert pairs > 100
    deadline = time.monotonic() + TIMEOUT
    while open_fds(pid) > base_fds and time.monotonic() < deadline:
        time.sleep(0.1)  # closes that answer our FIN are still landing
    assert open_fds(pid) <= base_fds, "descriptors left behind"
    assert server.rss_kib() - base_rss < RSS_TOLERANCE_KIB, (base_rss, server.rss_kib())
    assert "Traceback" not in "\n".join(server.lines)
