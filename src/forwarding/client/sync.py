"""A blocking client for scripts and REPLs: sockets and the same handshake core, no event loop."""

from __future__ import annotations

import socket
import ssl
from types import TracebackType

from ..errors import ConnectionClosed, HandshakeTimeout
from ..protocol.client import ClientHandshake, Established
from ..protocol.sealing import Sealer
from .address import parse_address

MAX_LINE = 64 * 1024


class SyncChannel:
    """An established session over a blocking socket."""

    def __init__(self, sock: socket.socket, hs4: Established, rest: bytes) -> None:
        self.sock = sock
        self.chid = hs4.chid
        self.online = hs4.online
        self.timeout = hs4.timeout
        self._rest = rest  # data that followed hs4 in the same read

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; ``b""`` once the relay closed the session."""
        if self._rest:
            out, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
            return out
        try:
            return self.sock.recv(max_bytes)
        except ssl.SSLEOFError:
            return b""

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise ConnectionClosed(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def __iter__(self) -> SyncChannel:
        return self

    def __next__(self) -> bytes:
        chunk = self.recv()
        if not chunk:
            raise StopIteration
        return chunk

    def send_eof(self) -> None:
        if isinstance(self.sock, ssl.SSLSocket):
            self.close()  # TLS cannot half-close
        else:
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def connect(
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
) -> SyncChannel:
    """Blocking twin of :func:`forwarding.connect`, with the same arguments."""
    host, port = parse_address(address) if isinstance(address, str) else address
    hs = ClientHandshake(chid, recvers, timeout, wait, Sealer.from_secret(secret) if secret else None, hangup)
    sock = socket.create_connection((host, port), timeout=open_timeout)
    try:
        if tls:
            ctx = ssl.create_default_context() if tls is True else tls
            sock = ctx.wrap_socket(sock, server_hostname=host)
        buf = bytearray()
        sock.sendall(hs.hs1() + hs.hs3() if hs.can_pipeline else hs.hs1())
        hs.receive_hs2(_line(sock, buf))
        if not hs.can_pipeline:
            sock.sendall(hs.hs3())
        hs4 = hs.receive_hs4(_line(sock, buf))
    except TimeoutError:
        sock.close()
        raise HandshakeTimeout(f"no handshake with {host}:{port} in time") from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return SyncChannel(sock, hs4, bytes(buf))


def _line(sock: socket.socket, buf: bytearray) -> bytes:
    while (end := buf.find(b"\n")) < 0:
        if len(buf) > MAX_LINE:
            raise ConnectionClosed("the relay sent an over-long handshake line")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("the relay closed the connection during the handshake")
        buf += chunk
    line = bytes(buf[: end + 1])
    del buf[: end + 1]
    return line
