"""The operator's control socket: list sessions, close one, reload the configuration.

``forwarding serve --admin-socket PATH`` listens on a Unix socket (mode 0600:
only the relay's user may use it). Each request is one JSON line, each answer
one JSON line; ``forwarding admin PATH ...`` speaks it (docs/operations.md):

* ``{"cmd": "sessions"}`` -> ``{"ok": true, "sessions": [{chid, peer, recvers, mode, in, out, dropped, age, idle}]}``
  (and ``node`` in each row on a cluster node)
* ``{"cmd": "close", "chid": C}`` -> closes that session (outcome ``admin_closed``)
* ``{"cmd": "reload"}`` -> re-reads the configuration (as SIGHUP does)
* ``{"cmd": "drain"}`` -> stops accepting and exits once the sessions are gone or the drain grace is over (SIGUSR2)
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, cast

from ..protocol.linebuffer import LineBuffer, LineTooLong
from . import status
from .outcome import Outcome

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.admin")
MAX_REQUEST = 4096


async def start(relay: Relay, path: str) -> asyncio.AbstractServer:
    if os.path.exists(path):
        if _answers(path):
            raise OSError(errno.EADDRINUSE, f"admin socket {path} belongs to a running relay")
        os.unlink(path)  # a stale socket from an earlier run
    old = os.umask(0o177)
    try:
        server = await relay.loop.create_unix_server(lambda: AdminProtocol(relay), path)
    finally:
        os.umask(old)
    log.info("admin socket", extra={"fields": {"path": path}})
    return server


def _answers(path: str) -> bool:
    """Whether something listens on the Unix socket at ``path`` (a stale one refuses)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class AdminProtocol(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._lines = LineBuffer(MAX_REQUEST)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._lines.feed(data)
        while True:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self._answer({"ok": False, "desc": f"request over {MAX_REQUEST} bytes"})
                self._transport.close()
                return
            if line is None:
                return
            self._answer(self._handle(line))

    def _answer(self, reply: dict[str, Any]) -> None:
        assert self._transport is not None
        self._transport.write(json.dumps(reply).encode() + b"\n")

    def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "desc": "request is not JSON"}
        if not isinstance(req, dict):
            return {"ok": False, "desc": "request is not a JSON object"}
        cmd = req.get("cmd")
        relay = self._relay
        if cmd == "sessions":
            rows = status.sessions(relay)
            if relay.cluster is not None:  # a cluster node lists its own sessions: say whose they are
                for row in rows:
                    row["node"] = relay.cluster.node
            return {"ok": True, "sessions": sorted(rows, key=lambda r: str(r["chid"]))}
        if cmd == "close":
            chid = req.get("chid")
            target = next((s for s in relay.sessions if s.established and s.chid == chid), None)
            if target is None:
                return {"ok": False, "desc": f"no session with chid {json.dumps(chid)}"}
            target.close(Outcome.ADMIN_CLOSED, "closed by an operator")
            log.info("admin close", extra={"fields": {"chid": target.chid}})
            return {"ok": True}
        if cmd == "reload":
            try:
                changed, restart = relay.reload()
            except Exception as exc:  # a bad file must not take the relay down
                return {"ok": False, "desc": f"reload failed: {exc}"}
            return {"ok": True, "changed": changed, "needs_restart": restart}
        if cmd == "drain":
            relay.drain_requested.set()
            return {"ok": True, "sessions": len(relay.sessions), "grace": relay.config.drain_grace}
        return {"ok": False, "desc": f"unknown cmd {json.dumps(cmd)}; known: sessions, close, reload, drain"}
