"""TLS for sessions, done with ``ssl.MemoryBIO`` between the socket and the Session.

Why not ``create_server(ssl=...)``: a TLS handshake that fails there never
reaches the protocol, so it could be neither logged nor counted, and admission
limits would apply only after the expensive part. Why not ``loop.start_tls``:
under uvloop it stalled a handshake now and then in our tests (bytes that arrive
between ``connection_made`` and the switch). Here the Session sees a transport
(:class:`~forwarding.tlsbio.BioTransport`) that encrypts on write, and this protocol decrypts on
read; plain-TCP sessions do not pay for any of it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol, cast

from ..tlsbio import BioTransport
from .outcome import Outcome

READ_SIZE = 256 * 1024


class Inner(Protocol):
    """What runs over TLS: a Session, or the WebSocket layer (server/ws.py) with one inside."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def tls_established(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def close(self, outcome: Outcome, desc: str | None = None) -> None: ...


class TlsProtocol(asyncio.Protocol):
    """Sits between the socket's transport and a :class:`~forwarding.server.session.Session` (or WebSocket layer)."""

    def __init__(self, session: Inner, context: ssl.SSLContext) -> None:
        self._session = session
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._raw: asyncio.Transport | None = None
        self._app: BioTransport | None = None
        self._handshaken = False
        self._close_notified = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._raw = raw
        self._app = BioTransport(self, raw, self._ssl)
        self._session.connection_made(self._app)

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        try:
            if not self._handshaken:
                self._ssl.do_handshake()
                self._handshaken = True
                self.flush()
                self._session.tls_established()
            while plain := self._read_plain():
                # At most READ_SIZE per call, as from a plain socket: the largest
                # data frame the relay sends is bounded by it (docs/protocol.md, 12.1).
                self._session.data_received(plain)
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as exc:
            self.flush()  # the alert tells the client why
            self._session.close(Outcome.TLS_FAILED if not self._handshaken else Outcome.RESET, str(exc))
            return
        self.flush()
        if self._close_notified and self._app is not None:
            self._close_notified = False  # once
            # close_notify is the client's FIN (TLS 1.3 allows writing on after it):
            # the session may keep the connection open to send (5.1).
            if not self._session.eof_received():
                self._app.close()

    def _read_plain(self) -> bytes:
        chunks = []
        left = READ_SIZE
        while left > 0:
            try:
                chunk = self._ssl.read(left)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client's EOF
                self._close_notified = True
                break
            if not chunk:  # SSLObject reads b"" once close_notify has arrived
                self._close_notified = True
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def flush(self) -> None:
        out = self._out.read()
        if out and self._raw is not None and not self._raw.is_closing():
            self._raw.write(out)

    def encrypt(self, data: bytes) -> None:
        self._ssl.write(data)
        self.flush()

    def eof_received(self) -> bool | None:
        return self._session.eof_received()

    def pause_writing(self) -> None:
        self._session.pause_writing()

    def resume_writing(self) -> None:
        self._session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.connection_lost(exc)
        self._app = self._raw = None  # the BioTransport points back at us: no cycle left to collect
