"""The relay server: listeners, the set of sessions, start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ..config import Mode, ServerConfig
from ..routing.local import LocalRouter
from .outcome import Outcome
from .session import Session

log = logging.getLogger("forwarding.relay")


@dataclass(slots=True)
class Stats:
    """Running totals; sessions add theirs when they close."""

    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_dropped: int = 0


class Relay:
    """Accepts connections and owns every :class:`Session` and the router."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.loop = loop or asyncio.get_running_loop()
        self.router = LocalRouter()
        self.broadcast_mode = config.mode is Mode.BROADCAST
        self.sessions: set[Session] = set()
        self.stats = Stats()
        self._servers: list[asyncio.Server] = []
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> list[tuple[str, int]]:
        """Listen on every configured host; return the bound ``(host, port)`` pairs."""
        server = await self.loop.create_server(
            lambda: Session(self),
            host=list(self.config.hosts),
            port=self.config.port,
            reuse_address=True,
            backlog=4096,
        )
        self._servers.append(server)
        bound = [sock.getsockname()[:2] for sock in server.sockets]
        for host, port in bound:
            log.info("listening", extra={"fields": {"address": _address(host, port), "mode": self.config.mode.value}})
        return bound

    async def stop(self) -> None:
        """Stop accepting, close every session cleanly, cut what has not drained in time."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.close(Outcome.SHUTDOWN)
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace)
        except TimeoutError:
            for session in list(self.sessions):
                session.close(Outcome.SHUTDOWN, abort=True)
            await self._idle.wait()
        for server in self._servers:
            await server.wait_closed()

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.stats.connections += 1
        self._idle.clear()

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        stats = self.stats
        stats.bytes_in += session.bytes_in
        stats.bytes_out += session.bytes_out
        stats.bytes_dropped += session.dropped
        assert session.outcome is not None
        fields: dict[str, object] = {
            "chid": session.chid,
            "peer": session.peer,
            "reason": session.outcome.value,
            "in": session.bytes_in,
            "out": session.bytes_out,
            "dropped": session.dropped,
            "duration": round(self.loop.time() - session.opened_at, 3),
        }
        if session.desc:
            fields["desc"] = session.desc
        log.info("session closed", extra={"fields": fields})
        if not self.sessions:
            self._idle.set()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where it is installed (a default dependency on Linux), else asyncio's."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise
        return asyncio.new_event_loop
    return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)


async def serve_until_signalled(config: ServerConfig) -> None:
    relay = Relay(config)
    await relay.start()
    log.debug("event loop", extra={"fields": {"loop": type(asyncio.get_running_loop()).__module__}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping", extra={"fields": {"sessions": len(relay.sessions)}})
    await relay.stop()
    log.info("stopped", extra={"fields": {"connections": relay.stats.connections}})


def run(config: ServerConfig, loop: str = "auto") -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve_until_signalled(config))
