"""WebSocket sessions (``--ws-port``): browsers join the relay as ordinary sessions.

A layer under :class:`~forwarding.server.session.Session`, as TLS is
(:mod:`.tls`): :class:`WsProtocol` sits on the socket (or on TLS, for wss://)
and drives websockets' sans-I/O :class:`~websockets.server.ServerProtocol`;
the Session sees a :class:`WsTransport` and knows nothing of frames. The
mapping (docs/protocol.md, section 14):

* HTTP ``GET /`` and the files of the bundled web client are served and the
  connection closed; ``GET /ws`` with an upgrade becomes a session.
* Before hs4, each text message from the client is one handshake line; each
  reply line goes out as one text message. The Session says when hs4 is out
  (:meth:`WsProtocol.handshake_over`): no guessing from the bytes, which are
  base64 under ``--secret``.
* After hs4, every message from the client is data (raw: the bytes; framed:
  frames), and every write of the Session is one binary message: a raw
  receiver gets one per chunk, a framed one whole frames (writes are
  frame-aligned).
* A WebSocket has no half-close: the relay's end of stream for a raw session
  is a close frame (1000, "end of stream"), and the client's close frame ends
  its session. Framed sessions half-close with the ``eof`` command.

Flow control passes straight through: the Session watches the socket
transport's own buffer, so a WebSocket receiver is over its mark exactly when
its socket is. A WebSocket end is never spliced (its socket carries frames).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, cast

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..layered import LayeredTransport
from ..logs import Limited, blur_address
from . import turns
from .outcome import Outcome
from .session import Session

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.ws")

WS_PATH = "/ws"
_PIECE = 16 << 10
"""Bytes of a read parsed at a time while they hold many frames (about 6 ms of 7-byte frames)."""
_FEW = 64
"""Frames in a piece below which the rest of the read is parsed in one go."""
_QUIET = logging.getLogger("forwarding.ws.protocol")  # websockets' own debug lines, off by default
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
# The page and its scripts come from the relay itself and talk only to it.
_CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'"


def _load_pages() -> dict[str, tuple[str, bytes]]:
    """The bundled web client (src/forwarding/web), read once: path -> (content type, body)."""
    pages: dict[str, tuple[str, bytes]] = {}
    root = resources.files("forwarding") / "web"
    for entry in root.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if entry.is_file() and suffix in _TYPES:
            pages["/" + entry.name] = (_TYPES[suffix], entry.read_bytes())
    if "/index.html" in pages:
        pages["/"] = pages["/index.html"]
    return pages


_PAGES: dict[str, tuple[str, bytes]] | None = None


REFUSALS = Limited(log, "websocket refused")
"""Refused upgrades, at most 20 lines a minute: strangers can cause them."""


class WsProtocol(asyncio.Protocol):
    """One WebSocket listener connection: HTTP, then (after an upgrade) a Session's transport."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        limits = relay.config.limits
        # One message holds a handshake line, or a frame of max_frame with its header.
        self._ws = ServerProtocol(max_size=max(limits.max_frame + 8, limits.max_line + 2), logger=_QUIET)
        self._raw: asyncio.Transport | None = None
        self._app: WsTransport | None = None
        self._session: Session | None = None
        self._text = True  # before hs4: the Session's writes are reply lines, one text message each
        self._text_message = False  # the message being received began as text
        self._timer: asyncio.TimerHandle | None = None  # the HTTP phase's deadline, then the pings
        self._pong_due = False
        self._peer = "?"
        # Pongs answer pings whether or not the client reads: while our output is over
        # its mark, the pongs queued count, and past the mark the client is cut off.
        # (Pausing its reading instead would tie its sending to its reading, which
        # deadlocks clients that send under the lock their reader needs.)
        self._backlogged = False
        self._pong_debt = 0
        self._held = False  # the Session paused its reading
        self._deferred: bytearray | None = None  # read, not yet parsed: it waits for our next turn

    # -- from the socket (or TLS) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not peer:
            self._peer = "?"
        else:
            self._peer = blur_address(peer[0]) if self._relay.config.blur_addresses else f"{peer[0]}:{peer[1]}"
        # The whole upgrade (and TLS, under wss) must fit in the handshake timeout.
        limit = self._relay.config.limits.handshake_timeout
        self._timer = self._relay.loop.call_later(limit, self._upgrade_expired)

    def tls_established(self) -> None:
        """Called by TlsProtocol (wss://); the upgrade comes next."""

    def data_received(self, data: bytes) -> None:
        if self._deferred is not None:  # read while our turn is over (the Session resumed us): in order
            self._deferred += data
            return
        self._receive(data)

    def _receive(self, data: bytes | bytearray) -> None:
        """Parse and run ``data`` for at most a slice of the loop (server/turns.py); defer the rest.

        websockets parses all it is given at once, and a read of 7-byte frames
        takes about 100 ms: so a read goes in in pieces while the pieces turn out
        to hold many frames, and at the slice's end the rest waits for the next turn.
        """
        ws = self._ws
        deadline = time.monotonic() + turns.SLICE
        pos, size, piece = 0, len(data), _PIECE
        view = memoryview(data)  # pieces without copies: websockets copies them into its buffer anyway
        while pos < size:
            end = size if piece == 0 else min(size, pos + piece)
            ws.receive_data(data if pos == 0 and end == size else cast(bytes, view[pos:end]))
            pos = end
            events = ws.events_received()
            for event in events:
                raw = self._raw
                if raw is None or raw.is_closing():
                    return  # cut off by an earlier frame of this read: the rest is not looked at
                if isinstance(event, Request):
                    self._request(event)
                elif isinstance(event, Frame):
                    self._frame(event)
            self.flush()
            if len(events) < _FEW:
                piece = 0  # large messages: the rest in one go
            if pos < size and time.monotonic() > deadline:
                self._deferred = bytearray(view[pos:])
                self._set_reading()
                self._relay.loop.call_soon(self._next_turn)
                return

    def _next_turn(self) -> None:
        data, self._deferred = self._deferred, None
        if data is not None and self._raw is not None:
            self._receive(data)
        self._set_reading()

    def hold_reading(self, held: bool) -> None:
        """The Session's own pause (a receiver over its mark, a rate cap...), kept apart from our turns."""
        self._held = held
        self._set_reading()

    def _set_reading(self) -> None:
        raw = self._raw
        if raw is None or raw.is_closing():
            return
        if self._held or self._deferred is not None:
            raw.pause_reading()
        else:
            raw.resume_reading()

    def eof_received(self) -> bool:
        # TCP FIN without a close frame: the client has gone (browsers never half-close).
        self._ws.receive_eof()
        self.flush()
        return False

    def pause_writing(self) -> None:
        self._backlogged = True
        if self._session is not None:
            self._session.pause_writing()

    def resume_writing(self) -> None:
        self._backlogged = False
        self._pong_debt = 0
        if self._session is not None:
            self._session.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._session is not None:
            self._session.connection_lost(exc)
        self._session = self._app = self._raw = None  # no cycle left for the collector (as server/tls.py)

    def close(self, outcome: Outcome, desc: str | None = None) -> None:
        """TlsProtocol's way to end us (a TLS error)."""
        if self._session is not None:
            self._session.close(outcome, desc)
        elif self._raw is not None:
            self._raw.close()

    # -- HTTP -----------------------------------------------------------------------

    def _request(self, request: Request) -> None:
        path = request.path.split("?", 1)[0]
        ws = self._ws
        if path == WS_PATH:
            why = self._origin_refusal(request.headers)
            if why is not None:
                REFUSALS.log(logging.INFO, {"peer": self._peer, "status": 403, "why": why})
                ws.send_response(ws.reject(403, why + "\n"))
                return
            response = ws.accept(request)
            ws.send_response(response)
            if response.status_code == 101:
                self._open_session()
            else:
                REFUSALS.log(
                    logging.INFO,
                    {
                        "peer": self._peer,
                        "status": response.status_code,
                        "why": response.body.decode(errors="replace").strip(),
                    },
                )
            return
        global _PAGES
        if _PAGES is None:
            _PAGES = _load_pages()
        page = _PAGES.get(path)
        if page is None:
            ws.send_response(
                ws.reject(404, f"nothing at {path[:100]}; the web client is at / and WebSockets at {WS_PATH}\n")
            )
            return
        content_type, body = page
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", _CSP),
                ("Connection", "close"),
            ]
        )
        ws.send_response(Response(200, "OK", headers, body))

    def _origin_refusal(self, headers: Headers) -> str | None:
        """Cross-site WebSocket hijacking: a browser page from elsewhere may not use the relay unless allowed.

        No Origin (not a browser) and the relay's own origin are allowed, and
        those given with ``--ws-allow-origin`` (``*``: any)."""
        origin = headers.get("Origin")
        allowed = self._relay.config.ws_allow_origins
        if origin is None or "*" in allowed or origin in allowed:
            return None
        host = headers.get("Host")
        if host is not None and origin.split("://", 1)[-1] == host:
            return None
        return f"origin {origin[:100]} is not allowed (the relay's own page is; see --ws-allow-origin)"

    def _upgrade_expired(self) -> None:
        self._timer = None
        if self._session is None and self._raw is not None:
            REFUSALS.log(
                logging.INFO,
                {"peer": self._peer, "status": 408, "why": "no WebSocket upgrade within the handshake timeout"},
            )
            self._raw.abort()

    # -- the session -------------------------------------------------------------------

    def _open_session(self) -> None:
        assert self._raw is not None
        if self._timer is not None:
            self._timer.cancel()
        self._arm_ping()
        self._app = WsTransport(self, self._raw)
        self._session = Session(self._relay, layer=self)
        self._session.connection_made(self._app)

    def handshake_over(self) -> None:
        """The Session has written hs4 (or, in broadcast mode, needs none): data from now on."""
        self._text = False

    def _frame(self, frame: Frame) -> None:
        session = self._session
        if session is None:
            return
        opcode = frame.opcode
        if opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            if opcode is not Opcode.CONT:
                self._text_message = opcode is Opcode.TEXT
            data = bytes(frame.data)
            if self._text and self._text_message and frame.fin:
                data += b"\n"  # one text message, one handshake line (docs/protocol.md, 14)
            session.data_received(data)
        elif opcode is Opcode.PONG:
            self._pong_due = False
        elif opcode is Opcode.PING and self._backlogged:
            self._pong_debt += len(frame.data) + 2  # its pong, queued behind what it does not read
            if self._pong_debt > self._relay.config.write_buffer_high:
                session.close(Outcome.FRAME_ERROR, "pings while not reading the answers", abort=True)
        elif opcode is Opcode.CLOSE:
            # websockets has queued its close frame in answer (or this answers ours):
            # the session ends, a WebSocket cannot go on receiving.
            session.eof_received()

    def send(self, data: bytes) -> None:
        ws = self._ws
        if ws.state is not State.OPEN:
            return  # closing: the session's output ends with the close frame
        if self._text:
            for line in data.split(b"\n"):
                if line:
                    ws.send_text(line)
            self.flush()
        else:
            # The hot path: our own header in front of the payload as it is, no copy.
            # websockets' send_binary would build each frame anew: a fresh 256-KiB
            # object per chunk, which glibc maps and unmaps (a third of the relay's CPU).
            self.flush()  # anything websockets has queued (a pong) goes first
            raw = self._raw
            if raw is not None and not raw.is_closing():
                raw.writelines((_binary_header(len(data)), data))

    def end_of_stream(self) -> None:
        """The Session's FIN: a close frame, after what was written."""
        if self._ws.state is State.OPEN:
            self._ws.send_close(1000, "end of stream")
            self.flush()

    def flush(self) -> None:
        raw = self._raw
        if raw is None:
            return
        for chunk in self._ws.data_to_send():
            if raw.is_closing():
                return
            if chunk:
                raw.write(chunk)
            else:
                self._send_eof(raw)

    def _send_eof(self, raw: asyncio.Transport) -> None:
        """websockets' end of the connection: after the close handshake, a failure (1009), or an HTTP reply.

        A half-close, as websockets asks, not a close: closing with the client's
        bytes unread would make the kernel reset the connection, and a reset can
        destroy what we sent last (the close frame, the 403 page) before the client
        reads it. We read on, discarding, until the client's FIN; a deadline bounds
        that: the upgrade's, or the Session's ``--close-timeout``.
        """
        ws = self._ws
        raw.write_eof()
        session, failure, close = self._session, ws.parser_exc, ws.close_sent
        if session is None or failure is None or isinstance(failure, EOFError) or close is None:
            return  # a close handshake, or the client's FIN: the Session hears of it as it is
        # websockets failed the connection (a message over the limit, a protocol
        # error): the session ends now, not at the client's FIN.
        session.close(Outcome.FRAME_ERROR, f"WebSocket close {close.code}: {close.reason or type(failure).__name__}")

    # -- keepalive ------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        interval = self._relay.config.ws_ping_interval
        if interval > 0:
            self._timer = self._relay.loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        self._timer = None
        session = self._session
        if session is None or self._ws.state is not State.OPEN:
            return
        if self._pong_due:
            interval = self._relay.config.ws_ping_interval
            session.close(Outcome.RESET, f"no pong within {interval:g} s", abort=True)
            return
        self._pong_due = True
        self._ws.send_ping(os.urandom(4))
        self.flush()
        self._arm_ping()


def _binary_header(n: int) -> bytes:
    """A final, unmasked binary frame's header (RFC 6455, 5.2): what a server sends."""
    if n < 126:
        return bytes((0x82, n))
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big")
    return b"\x82\x7f" + n.to_bytes(8, "big")


class WsTransport(LayeredTransport):
    """What a WebSocket session's Session writes to: messages out, the socket's flow control as it is."""

    def __init__(self, protocol: WsProtocol, raw: asyncio.Transport) -> None:
        super().__init__(raw)
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol.send(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        # One write, one message: a framed receiver's header and payload stay together.
        self._protocol.send(b"".join(list_of_data))

    def pause_reading(self) -> None:
        self._protocol.hold_reading(True)

    def resume_reading(self) -> None:
        self._protocol.hold_reading(False)

    def write_eof(self) -> None:
        self._protocol.end_of_stream()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._protocol.end_of_stream()
        self._protocol.flush()  # an answer websockets has queued (the client's close frame's echo) first
        self._raw.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":  # its bytes are frames: never spliced
            return default
        return super().get_extra_info(name, default)
