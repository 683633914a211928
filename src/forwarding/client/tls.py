"""TLS for the asyncio client over ``ssl.MemoryBIO``, so that a session can half-close.

asyncio's own TLS transport cannot ``write_eof`` (``can_write_eof()`` is
false), so a client over TLS could never say "I have finished sending" and go
on reading (docs/protocol.md 5.1): ``nc -N``-style use and file transfers would
hang. Here ``write_eof`` sends close_notify and then a TCP FIN, and reading
goes on; TLS 1.3 allows exactly that. The relay does the same on its side
(server/tls.py).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast

from ..tlsbio import BioTransport

READ_SIZE = 256 * 1024


async def open_tls_connection(
    host: str, port: int, context: ssl.SSLContext, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection(..., ssl=context)``, with a writer that can ``write_eof``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(reader, loop=loop)
    done: asyncio.Future[None] = loop.create_future()
    _, tls = await loop.create_connection(lambda: TlsClientProtocol(app, context, host, done), host, port)
    await done  # the TLS handshake, with its errors
    assert isinstance(tls, TlsClientProtocol) and tls.app_transport is not None
    return reader, asyncio.StreamWriter(tls.app_transport, app, reader, loop)


class TlsClientProtocol(asyncio.Protocol):
    def __init__(
        self, app: asyncio.Protocol, context: ssl.SSLContext, hostname: str, done: asyncio.Future[None]
    ) -> None:
        self._app = app
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=False, server_hostname=hostname)
        self._done = done
        self._raw: asyncio.Transport | None = None
        self.app_transport: BioTransport | None = None
        self._handshaken = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self.app_transport = BioTransport(self, self._raw, self._ssl)
        self._try_handshake()

    def _try_handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return False
        except ssl.SSLError as exc:
            self.flush()
            if not self._done.done():
                self._done.set_exception(exc)
            assert self._raw is not None
            self._raw.close()
            return False
        self.flush()
        self._handshaken = True
        assert self.app_transport is not None
        self._app.connection_made(self.app_transport)
        if not self._done.done():
            self._done.set_result(None)
        return True

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self._handshaken and not self._try_handshake():
            return
        while not self._eof:
            try:
                chunk = self._ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the relay's close_notify: its FIN
                chunk = b""
            except ssl.SSLError as exc:
                self.flush()
                self._app.connection_lost(exc)
                assert self._raw is not None
                self._raw.abort()
                return
            if not chunk:
                self._eof = True
                self._app.eof_received()
                break
            self._app.data_received(chunk)
        self.flush()  # post-handshake messages (tickets, key updates) may want an answer

    def eof_received(self) -> bool:
        if not self._handshaken:
            if not self._done.done():
                self._done.set_exception(ConnectionResetError("the relay closed during the TLS handshake"))
            return False
        if not self._eof:  # a FIN without close_notify: end of input all the same
            self._eof = True
            self._app.eof_received()
        return True  # we may still be writing

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionResetError("the relay closed during the TLS handshake"))
        elif self._handshaken:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def flush(self) -> None:
        out = self._out.read()
        if out and self._raw is not None and not self._raw.is_closing():
            self._raw.write(out)

    def encrypt(self, data: bytes) -> None:
        self._ssl.write(data)
        self.flush()
