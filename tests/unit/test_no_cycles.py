"""A closed session leaves no reference cycle: its memory goes back at once, not at the next collection.

The cyclic collector runs by counts of container objects, not bytes; a cycle
that holds a TLS session's buffers kept 100 MiB of a relay that had served 200
TLS pairs until it ran (docs/performance.md, scenario 6). So the test counts
what the collector would find after sessions have come and gone: nothing.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarding.config import ServerConfig
from forwarding.protocol.client import ClientHandshake
from forwarding.server.relay import Relay
from forwarding.server.session import Session
from forwarding.server.tls import TlsProtocol
from tests.integration.certs import CA

REQUEST = (lambda c: c.hs1() + c.hs3())(ClientHandshake(recvers=["nobody"]))


class Transport:
    """The few calls a session makes on a socket transport."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_plain_and_tls_sessions_leave_nothing_for_the_collector(tmp_path: Path, no_collector: None) -> None:
    ca = CA(tmp_path, "ca")
    server = ca.issue("server", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)

    found: dict[str, int] = {}

    async def sessions() -> None:
        relay = Relay(ServerConfig())
        gc.collect()  # what making the relay left
        for _ in range(10):
            session = Session(relay)
            session.connection_made(Transport())  # type: ignore[arg-type]
            session.data_received(REQUEST)
            session.connection_lost(None)
        del session
        found["plain"] = gc.collect()
        for _ in range(10):
            tls = TlsProtocol(Session(relay), context)
            tls.connection_made(Transport())  # type: ignore[arg-type]
            tls.connection_lost(None)
        del tls
        found["tls"] = gc.collect()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sessions())
    finally:
        loop.close()
    assert found == {"plain": 0, "tls": 0}
