"""The relay server: listeners, the set of sessions, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .. import logs
from ..config import Mode, ServerConfig
from ..protocol.sealing import Sealer
from ..routing.base import Router
from ..routing.local import LocalRouter
from . import admin, handoff, malloc, splice, workers
from .admission import Admission
from .deadlines import Deadlines
from .hostcounts import HostCounts
from .notify import notify
from .outcome import Outcome
from .quotas import Quotas
from .session import Session
from .status import RecentCloses
from .tls import TlsProtocol
from .visits import Visits

if TYPE_CHECKING:
    from ..routing.cluster import ClusterRouter
    from .node import Node

log = logging.getLogger("forwarding.relay")

REFUSALS_LOGGED_PER_SECOND = 10
"""Beyond this many close lines a second for connections that never finished
their handshake (refused, failed, abandoned, timed out), they are counted and
summed up in one line a second: a connect-and-close flood must not fill the
operator's disk (it wrote 1.3 GB an hour). Established sessions are always logged."""

UNESTABLISHED = frozenset(
    {
        Outcome.REFUSED,
        Outcome.HANDSHAKE_FAILED,
        Outcome.HANDSHAKE_ABANDONED,
        Outcome.HANDSHAKE_TIMEOUT,
        Outcome.TLS_FAILED,
        Outcome.CHID_IN_USE,
        Outcome.WAIT_TIMEOUT,
    }
)

FD_RESERVE = 64
"""Descriptors kept back from --max-connections for listeners, the admin and metrics
connections, log files and splice pipes: the documented refusal must come before
the descriptor limit, which would drop a client without a word."""

CLOSE_BATCH = 500
"""Sessions closed per pass of the event loop at shutdown: 20,000 at once held the loop for 2 s."""

RESTART_ONLY = (
    "hosts", "port", "ws_port", "mode", "admin_socket", "metrics", "cluster", "reuse_port", "workers", "handoff",
)  # fmt: skip
"""Settings a reload cannot change: the listeners are bound once."""


@dataclass(slots=True)
class Stats:
    """Running totals; sessions add theirs when they close."""

    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_dropped: int = 0
    bytes_discarded: int = 0
    outcomes: dict[Outcome, int] = dataclasses.field(default_factory=dict)
    """Closed connections by outcome."""


class Relay:
    """Accepts connections and owns every :class:`Session` and the router."""

    def __init__(
        self,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        reloader: Callable[[], ServerConfig] | None = None,
    ) -> None:
        self.config = config
        self._reloader = reloader
        self.loop = loop or asyncio.get_running_loop()
        self.router: Router = LocalRouter()
        self.cluster: ClusterRouter | None = None  # set by node.join: this relay is one node of a cluster
        self.legs: set[Session] = set()  # node-to-node legs, both ways (server/legs.py)
        self.leg_sealer = Sealer.from_secret(config.cluster.secret) if config.cluster is not None else None
        self._node: Node | None = None
        self.handoff: handoff.HandOff | None = None  # serve --workers: connections to the receiver's worker
        self.visits = Visits(config.max_waiting_visits)  # services and their unanswered visits
        self.broadcast_mode = config.mode is Mode.BROADCAST
        self.sessions: set[Session] = set()
        # Handshake and idle deadlines, bucketed; a handshake's bucket outlives its last connection.
        self.deadlines = Deadlines(self.loop, keep_empty=config.limits.handshake_timeout + 1.0)
        self.stats = Stats()
        self.recent_closes = RecentCloses()  # for /status
        self.admission = Admission(config.admission, _host_counts())
        self.quotas = Quotas(config.quotas)  # rate caps and byte quotas (none unless configured)
        # scrypt is deliberately slow: derive the key once, not per connection.
        self.sealer = Sealer.from_secret(config.secret) if config.secret else None
        # TLS runs inside each session (server/tls.py), after admission: refused
        # peers cost no crypto, and a failed TLS handshake gets a close log line.
        self.ssl_context = tls_context(config)
        self._servers: list[asyncio.AbstractServer] = []
        self._refusal_window = -1  # the second the refusal log budget counts for
        self._refusals_logged = 0
        self._refusals_unlogged = 0
        self._refusal_summary: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.drain_requested = asyncio.Event()  # SIGUSR2 or `forwarding admin PATH drain`
        self.draining = False
        self._listeners: list[asyncio.AbstractServer] = []  # the client listeners, closed by a drain

    async def start(self) -> list[tuple[str, int]]:
        """Listen on every configured host; return the bound ``(host, port)`` pairs."""
        if self.config.cluster is not None:
            from .node import Node  # nats-py is imported only for a cluster

            self._node = Node(self, self.config.cluster)
            await self._node.join()  # before any client: claims need the registry
            directory = os.environ.get(workers.HANDOFF_DIR)
            if directory and self.config.handoff and not self.broadcast_mode:  # a worker of serve --workers
                siblings = json.loads(os.environ.get(workers.HANDOFF_NODES, "[]"))
                self.handoff = handoff.HandOff(self, directory, self._node.id, siblings)
                self.handoff.start()
                self.visits.new_ticket = self.handoff.new_ticket

        def protocol() -> asyncio.Protocol:
            # Read at each accept: a reload may change the certificate.
            ssl_context = self.ssl_context
            if ssl_context is None:
                return Session(self)
            return TlsProtocol(Session(self), ssl_context)

        server = await self.loop.create_server(
            protocol,
            host=list(self.config.hosts),
            port=self.config.port,
            reuse_address=True,
            reuse_port=self.config.reuse_port or None,
            backlog=4096,
        )
        self._servers.append(server)
        self._listeners.append(server)
        for sock in server.sockets:
            # Accepted connections inherit it: TCP keepalive on every session at
            # no cost per connection.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        bound = [sock.getsockname()[:2] for sock in server.sockets]
        ws_bound: list[tuple[str, int]] = []
        if self.config.ws_port is not None:
            from .ws import WsProtocol  # websockets is imported only for a WebSocket listener

            def ws_protocol() -> asyncio.Protocol:
                ssl_context = self.ssl_context
                ws = WsProtocol(self)
                return ws if ssl_context is None else TlsProtocol(ws, ssl_context)

            ws_server = await self.loop.create_server(
                ws_protocol,
                host=list(self.config.hosts),
                port=self.config.ws_port,
                reuse_address=True,
                reuse_port=self.config.reuse_port or None,
                backlog=4096,
            )
            self._servers.append(ws_server)
            self._listeners.append(ws_server)
            ws_bound = [sock.getsockname()[:2] for sock in ws_server.sockets]
        if self.config.admin_socket:
            self._servers.append(await admin.start(self, self.config.admin_socket))
        if self.config.metrics:
            from . import metrics  # prometheus-client is only imported when asked for

            self._servers.append(await metrics.start(self, *self.config.metrics))
        for host, port in bound:
            fields = {
                "address": _address(host, port),
                "mode": self.config.mode.value,
                "tls": self.ssl_context is not None,
                "sealed": self.sealer is not None,
                "max_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            }
            log.info("listening", extra={"fields": fields})
        public = [_address(h, p) for h, p in bound + ws_bound if not ipaddress.ip_address(h).is_loopback]
        if public and not self.config.secret and not self.config.tls_client_ca:
            # Said once, out loud: anyone who can reach these addresses can use the relay.
            fields = {"addresses": ",".join(public), "fix": "--secret, or --tls-client-ca, or --host 127.0.0.1"}
            log.warning("open to anyone: listening beyond loopback with no secret and no client certificates",
                        extra={"fields": fields})  # fmt: skip
        for host, port in ws_bound:
            scheme = "wss" if self.ssl_context is not None else "ws"
            fields = {"address": _address(host, port), "url": f"{scheme}://{_address(host, port)}/ws"}
            log.info("listening for WebSockets", extra={"fields": fields})
        return bound

    async def drain(self, grace: float) -> None:
        """Stop accepting and let the open sessions run, for at most ``grace`` seconds (lame duck).

        Connections already accepted go on, their handshakes too; framed
        sessions are told (a ``draining`` event). Returns when the last session
        has closed or the grace has run out; :meth:`stop` closes what is left.
        """
        if self.draining:
            return
        self.draining = True
        for server in self._listeners:
            server.close()  # admin socket and metrics stay up: the operator watches the drain
        if self.handoff is not None:
            await self.handoff.stop()  # no more connections from the siblings either
        log.info("draining", extra={"fields": {"sessions": len(self.sessions), "grace": grace}})
        for session in list(self.sessions):
            session.draining(grace)
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.info("drain grace over", extra={"fields": {"sessions": len(self.sessions)}})

    async def stop(self, outcome: Outcome = Outcome.SHUTDOWN) -> None:
        """Stop accepting, close every session cleanly, cut what has not drained in time."""
        for server in self._servers:
            server.close()
        if self.handoff is not None:
            await self.handoff.stop()  # what the siblings sent is taken first, and closed below with the rest
        sessions = list(self.sessions)
        for i in range(0, len(sessions), CLOSE_BATCH):
            for session in sessions[i : i + CLOSE_BATCH]:
                session.close(outcome)
            await asyncio.sleep(0)  # let flushing and the closes under way go on meanwhile
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace)
        except TimeoutError:
            for session in list(self.sessions):
                session.close(outcome, abort=True)
            await self._idle.wait()
        for server in self._servers:
            await server.wait_closed()
        if self._node is not None:
            await self._node.leave()
        if self._refusal_summary is not None:  # say what the last second held back
            self._refusal_summary.cancel()
            self._log_unlogged_refusals()
        if self.config.admin_socket:
            with contextlib.suppress(OSError):
                os.unlink(self.config.admin_socket)

    @property
    def leg_splice(self) -> bool:
        """Legs are plain TCP whatever the clients speak: spliced wherever the OS allows."""
        return splice.AVAILABLE and self.config.splice

    @property
    def splice(self) -> bool:
        """Whether one-to-one sessions may be spliced: the bytes must be on a plain socket, not under TLS."""
        return splice.AVAILABLE and self.config.splice and self.ssl_context is None

    def reload(self) -> tuple[list[str], list[str]]:
        """Apply a freshly read configuration to new connections; sessions keep theirs.

        Returns the settings that changed and took effect, and those that changed
        but need a restart (listen addresses, mode, admin socket).
        """
        if self._reloader is None:
            raise RuntimeError("this relay was started without a configuration to reload")
        new = self._reloader()
        old = self.config
        changed = [f.name for f in dataclasses.fields(ServerConfig) if getattr(old, f.name) != getattr(new, f.name)]
        restart = [name for name in changed if name in RESTART_ONLY]
        config = dataclasses.replace(new, **{name: getattr(old, name) for name in RESTART_ONLY})
        # Everything that can fail (a missing certificate, a bad key) is built
        # before anything is applied: a reload is all or nothing.
        sealer, ssl_context = self.sealer, self.ssl_context
        if "secret" in changed:
            sealer = Sealer.from_secret(new.secret) if new.secret else None
        if {"tls_cert", "tls_key", "tls_client_ca"} & set(changed):
            ssl_context = tls_context(config)
        self.config, self.sealer, self.ssl_context = config, sealer, ssl_context
        self.admission.limits = new.admission
        self.deadlines.keep_empty = new.limits.handshake_timeout + 1.0
        self.quotas.limits = new.quotas  # for sessions established from now on
        self.visits.limit = new.max_waiting_visits
        live = [name for name in changed if name not in RESTART_ONLY]  # names only: never a secret's value
        fields = {"changed": ",".join(live) or "-", "needs_restart": ",".join(restart) or "-"}
        log.info("reloaded", extra={"fields": fields})
        return live, restart

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.stats.connections += 1
        self._idle.clear()

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        stats = self.stats
        handed = session.outcome is Outcome.HANDED_OFF  # it goes on in another worker, which logs it
        if not handed:
            self.recent_closes.add(session)
        stats.bytes_in += session.bytes_in
        stats.bytes_out += session.bytes_out
        stats.bytes_dropped += session.dropped
        stats.bytes_discarded += session.discarded
        assert session.outcome is not None
        stats.outcomes[session.outcome] = stats.outcomes.get(session.outcome, 0) + 1
        if handed:
            log.debug("handed off", extra={"fields": {"chid": session.chid, "peer": session.peer, "to": session.desc}})
        elif (session.outcome not in UNESTABLISHED or self.may_log_refusal()) and log.isEnabledFor(logging.INFO):
            fields: dict[str, object] = {
                "chid": session.chid,
                "peer": session.peer,
                "reason": session.outcome.value,
                "in": session.bytes_in,
                "out": session.bytes_out,
                "dropped": session.dropped,
                "discarded": session.discarded,
                "duration": round(self.loop.time() - session.opened_at, 3),
            }
            if session.desc:
                fields["desc"] = session.desc
            log.info("session closed", extra={"fields": fields})
        if not self.sessions:
            self._idle.set()

    def may_log_refusal(self) -> bool:
        second = int(self.loop.time())
        if second != self._refusal_window:
            self._refusal_window = second
            self._refusals_logged = 0
        if self._refusals_logged < REFUSALS_LOGGED_PER_SECOND:
            self._refusals_logged += 1
            return True
        self._refusals_unlogged += 1
        if self._refusal_summary is None:
            self._refusal_summary = self.loop.call_later(1.0, self._log_unlogged_refusals)
        return False

    def _log_unlogged_refusals(self) -> None:
        self._refusal_summary = None
        count, self._refusals_unlogged = self._refusals_unlogged, 0
        fields = {"count": count, "limit_per_second": REFUSALS_LOGGED_PER_SECOND}
        log.warning("handshake closes not logged", extra={"fields": fields})


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """TLS 1.2 or newer with the configured certificate; client certificates if a CA is given."""
    if not config.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(config.tls_client_ca)
    return ctx


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


async def serve_until_signalled(config: ServerConfig, reloader: Callable[[], ServerConfig] | None = None) -> None:
    relay = Relay(config, reloader=reloader)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The handlers go in before start() logs "listening": whoever waits for that
    # line may signal at once, and a signal before them would kill the process
    # with KeyboardInterrupt instead of stopping it cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, relay.drain_requested.set)  # lame duck, as nats-server's
    loop.add_signal_handler(signal.SIGUSR1, logs.reopen)  # after logrotate has moved --log-file
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_logged, relay)
    await relay.start()
    notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening")
    ready = os.environ.pop("FORWARDING_READY_FD", None)  # a worker of `serve --workers`: tell the supervisor
    if ready is not None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(ready), b"1")
            os.close(int(ready))  # systemd Type=notify: the listeners are up
    log.debug("event loop", extra={"fields": {"loop": type(loop).__module__}})
    asked = asyncio.ensure_future(stop.wait())
    drain = asyncio.ensure_future(relay.drain_requested.wait())
    await asyncio.wait([asked, drain], return_when=asyncio.FIRST_COMPLETED)
    outcome = Outcome.SHUTDOWN
    if drain.done() and not asked.done():
        notify("STOPPING=1\nSTATUS=draining")
        draining = asyncio.ensure_future(relay.drain(config.drain_grace))
        await asyncio.wait([asked, draining], return_when=asyncio.FIRST_COMPLETED)  # SIGTERM cuts a drain short
        draining.cancel()
        outcome = Outcome.DRAINED
    asked.cancel()
    drain.cancel()
    notify("STOPPING=1")
    log.info("stopping", extra={"fields": {"sessions": len(relay.sessions)}})
    await relay.stop(outcome)
    log.info("stopped", extra={"fields": {"connections": relay.stats.connections}})


def raise_open_file_limit(cap: int = 1 << 20) -> int:
    """Lift the soft limit on open files to the hard one (as Go's runtime does).

    Every connection is a descriptor, and a spliced sender four more; the usual
    soft default of 1,024 would cap a relay far below what it can serve.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - refused by the OS
            pass
    return soft


def _reload_logged(relay: Relay) -> None:
    notify("RELOADING=1")
    try:
        relay.reload()
    except Exception as exc:  # a broken file must not take the relay down
        log.error("reload failed", extra={"fields": {"error": str(exc)}})
    finally:
        notify("READY=1")


def fit_to_descriptors(config: ServerConfig, max_files: int) -> ServerConfig:
    """Lower ``max_connections`` to what the open-file limit can serve, saying so."""
    room = max(1, max_files - FD_RESERVE)
    if config.admission.max_connections <= room:
        return config
    fields = {"asked": config.admission.max_connections, "max_connections": room, "max_files": max_files}
    log.info("max_connections lowered to fit the open-file limit", extra={"fields": fields})
    admission = dataclasses.replace(config.admission, max_connections=room)
    return dataclasses.replace(config, admission=admission)


def run(config: ServerConfig, loop: str = "auto", reloader: Callable[[], ServerConfig] | None = None) -> None:
    max_files = raise_open_file_limit()
    config = fit_to_descriptors(config, max_files)
    if config.malloc_tuning:
        malloc.tune()
    fitted = None
    if reloader is not None:
        read = reloader

        def fitted() -> ServerConfig:  # a reloaded configuration is fitted too
            return fit_to_descriptors(read(), max_files)

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve_until_signalled(config, fitted))


def _host_counts() -> HostCounts | None:
    """A worker of ``serve --workers``: the host's table of connections per address (server/hostcounts.py)."""
    shared = os.environ.get(workers.HOST_COUNTS)
    if not shared:
        return None
    table = json.loads(shared)
    index = int(os.environ[workers.WORKER_INDEX])
    return HostCounts(table["path"], index, int(table["workers"]), bytes.fromhex(table["key"]))
