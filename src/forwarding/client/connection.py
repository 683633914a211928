"""The asyncio client: ``await forwarding.connect(...)`` or ``async with forwarding.connect(...)``.

Streams, not protocols: readability wins on the client side, and the relay, not
the client, is the hot path.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from ..errors import ConnectionClosed, HandshakeTimeout
from ..protocol.client import ClientHandshake, Established
from ..protocol.sealing import Sealer
from .address import parse_address
from .tls import open_tls_connection

MAX_LINE = 64 * 1024


class _Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class Channel:
    """An established session: bytes in, bytes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hs4: Established) -> None:
        self._reader = reader
        self._writer = writer
        self.chid = hs4.chid
        """This session's chid (the one asked for, or the generated one)."""
        self.online = hs4.online
        """Which named receivers were online at hs4 (``None`` for broadcast)."""
        self.timeout = hs4.timeout
        """The idle timeout the relay applies, in seconds."""
        self.peer = hs4.peer
        """For a session that answered a visit (``accept``), or a visitor: the other end's chid."""

    async def send(self, data: bytes) -> None:
        """Send ``data`` to the receivers; waits while the relay pushes back."""
        self._writer.write(data)
        await self._writer.drain()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` that arrived for us; ``b""`` once the relay closed the session."""
        return await self._reader.read(max_bytes)

    async def recv_exactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed(f"closed after {len(exc.partial)} of {n} bytes") from None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.recv():
            yield chunk

    async def send_eof(self) -> None:
        """Close our sending side (FIN); we go on receiving until our senders finish (docs/protocol.md, 5.1)."""
        self._writer.write_eof()  # over TLS too: close_notify, then FIN (client/tls.py)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Connector(Generic[C]):
    """The handshake, shared by :class:`connect` and :class:`connect_framed`."""

    _framed = False

    def __init__(
        self,
        address: str | tuple[str, int],
        *,
        chid: str | None = None,
        recvers: list[str] | None = None,
        secret: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        wait: bool = False,
        timeout: float | None = None,
        open_timeout: float | None = 30.0,
        hangup: bool = False,
        service: bool = False,
        accept: str | None = None,
    ) -> None:
        self._address = parse_address(address) if isinstance(address, str) else address
        sealer = Sealer.from_secret(secret) if secret else None
        self._hs = ClientHandshake(chid, recvers, timeout, wait, sealer, hangup, self._framed, service, accept)
        self._tls = ssl.create_default_context() if tls is True else (tls or None)
        self._open_timeout = open_timeout
        self._channel: C | None = None

    def _wrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hs4: Established) -> C:
        raise NotImplementedError

    async def _open(self) -> C:
        try:
            return await asyncio.wait_for(self._handshake(), self._open_timeout)
        except TimeoutError:
            raise HandshakeTimeout(f"no handshake with {self._address[0]}:{self._address[1]} in time") from None

    async def _handshake(self) -> C:
        host, port = self._address
        if self._tls is None:
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        else:  # our own TLS layer: it can half-close (client/tls.py)
            reader, writer = await open_tls_connection(host, port, self._tls, MAX_LINE)
        hs = self._hs
        try:
            # Without a secret hs3 needs nothing from hs2, so it goes in the same write.
            writer.write(hs.hs1() + hs.hs3() if hs.can_pipeline else hs.hs1())
            hs.receive_hs2(await _line(reader))
            if not hs.can_pipeline:
                writer.write(hs.hs3())
            hs4 = hs.receive_hs4(await _line(reader))
        except BaseException:
            writer.close()
            raise
        return self._wrap(reader, writer, hs4)

    def __await__(self) -> Generator[Any, None, C]:
        return self._open().__await__()

    async def __aenter__(self) -> C:
        self._channel = await self._open()
        return self._channel

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._channel is not None:
            await self._channel.close()


class connect(_Connector[Channel]):
    """Connect to a relay and do the handshake.

    ``await connect(...)`` gives a :class:`Channel`; ``async with connect(...) as ch``
    also closes it. ``recvers=None`` broadcasts; ``wait=True`` holds the handshake
    until every receiver is online (:class:`~forwarding.errors.RecversOffline` if
    they are not within the relay's handshake timeout). ``secret`` seals the
    handshake; ``tls`` is an :class:`ssl.SSLContext`, or ``True`` for the default one.
    ``hangup=True`` asks the relay to end this session when a named receiver leaves.
    ``accept=ticket`` answers a visit to a service (docs/protocol.md, 13): the
    channel is then paired with that visitor (``peer``).
    """

    def _wrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hs4: Established) -> Channel:
        return Channel(reader, writer, hs4)


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise ConnectionClosed("the relay closed the connection during the handshake") from None
    except asyncio.LimitOverrunError:
        raise ConnectionClosed("the relay sent an over-long handshake line") from None
    return line
