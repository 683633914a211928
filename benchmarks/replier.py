"""The floor of connection set-up: a minimal uvloop server that answers the plain handshake's bytes.

    python -m benchmarks.replier PORT REPLY_HEX

It reads until it has two lines (hs1 and hs3, pipelined), writes a fixed
reply (a real relay's hs2 and hs4 for those bytes, so the connectors accept
it) and forgets the connection when the client resets it. No parsing, no
chid, no timers: accept, read, write, close, which any uvloop server pays
(scenario 5), and HAProxy's backend in its set-up row.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast


class Reply(asyncio.Protocol):
    __slots__ = ("_transport", "_seen", "_reply")

    def __init__(self, reply: bytes) -> None:
        self._reply = reply
        self._seen = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._seen += data.count(b"\n")
        if self._seen >= 2 and self._transport is not None:
            self._transport.write(self._reply)
            self._seen = -(1 << 30)  # once


async def serve(port: int, reply: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Reply(reply), "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), bytes.fromhex(sys.argv[2])))


if __name__ == "__main__":
    main()
