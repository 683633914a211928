"""The transport half of TLS over ``ssl.MemoryBIO``, shared by the relay and the asyncio client.

The protocol half differs (the relay's admits and logs, the client's resolves
a handshake future), this does not: plaintext in, records out through the
protocol, and a ``write_eof`` that sends close_notify and then FIN, so that
either side can half-close (docs/protocol.md 5.1; asyncio's own TLS cannot).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

from .layered import LayeredTransport


class Encrypting(Protocol):
    def encrypt(self, data: bytes) -> None: ...

    def flush(self) -> None: ...


class BioTransport(LayeredTransport):
    def __init__(self, protocol: Encrypting, raw: asyncio.Transport, ssl_object: ssl.SSLObject) -> None:
        super().__init__(raw)
        self._protocol = protocol
        self._ssl_object = ssl_object

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol.encrypt(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._protocol.encrypt(b"".join(list_of_data))

    def write_eof(self) -> None:
        """close_notify, then FIN: the end of our sending; reading goes on (TLS 1.3)."""
        self._close_notify()
        self._raw.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def _close_notify(self) -> None:
        try:
            self._ssl_object.unwrap()  # queue close_notify
        except ssl.SSLError:  # SSLWantReadError: the peer's own has not come yet
            pass
        self._protocol.flush()

    def close(self) -> None:
        if not self._raw.is_closing():
            self._close_notify()
        self._raw.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl_object
        if name == "peercert":
            return self._ssl_object.getpeercert()
        if name == "sslcontext":
            # StreamReaderProtocol closes the connection at EOF when this is set
            # ("SSL cannot half-close"); this transport can.
            return default
        return super().get_extra_info(name, default)
