"""One node of a cluster: the registry, the leg listener, fencing (docs/operations.md, "A cluster").

The relay calls :func:`join` before its client listeners open, so no client
is served before this node knows who owns what, and :meth:`Node.leave` after
its sessions have closed, giving its lease back so that the other nodes free
its chids at once instead of after the lease's lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING

import nats.errors

from ..config import ClusterSettings, default_node_id
from ..routing.cluster import ClusterRouter, Owner, Unavailable
from ..routing.registry import NatsRegistry, RegistryConfig
from . import legs
from .outcome import Outcome

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.node")


class Node:
    def __init__(self, relay: Relay, settings: ClusterSettings) -> None:
        self.relay = relay
        self.settings = settings
        self.id = settings.node or default_node_id()
        self.cluster: ClusterRouter | None = None
        self.registry: NatsRegistry | None = None
        self.leg_address = ""
        self._server: asyncio.AbstractServer | None = None

    async def join(self) -> None:
        relay, settings = self.relay, self.settings

        def accept() -> asyncio.Protocol:
            assert self.cluster is not None
            return legs.LegIn(relay, self.cluster)

        host, port = settings.listen
        self._server = await relay.loop.create_server(accept, host=host, port=port, reuse_address=True, backlog=1024)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.leg_address = settings.advertise or (
            f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        )
        if not settings.advertise and bound_host in ("0.0.0.0", "::"):
            fields = {"legs": self.leg_address, "fix": "--cluster-advertise HOST:PORT"}
            log.warning("other hosts cannot dial an unspecified address for legs", extra={"fields": fields})
        tls = None
        if settings.tls_ca:
            tls = ssl.create_default_context(cafile=settings.tls_ca)
        config = RegistryConfig(
            servers=settings.servers,
            node=self.id,
            leg=self.leg_address,
            lease_ttl=settings.lease_ttl,
            fence_margin=min(4.0, settings.lease_ttl / 4),
            renew_every=min(2.0, settings.lease_ttl / 8),
            replicas=settings.replicas,
            memory=settings.memory,
            creds=settings.creds,
            tls=tls,
        )
        self.registry = NatsRegistry(config, on_change=self._changed, on_fenced=self._fenced, on_lapsed=self._lapsed)
        self.cluster = ClusterRouter(self.id, self.registry, legs.opener(relay))
        relay.router = relay.cluster = self.cluster
        try:
            await self.registry.start()
        except (Unavailable, TimeoutError, OSError, nats.errors.Error) as exc:
            # A clear line for the operator, not a traceback: serve exits 1 with it.
            await self.leave()
            raise OSError(f"cannot join the cluster at {','.join(settings.servers)}: {exc}") from None
        fields = {"node": self.id, "legs": self.leg_address, "nats": ",".join(settings.servers)}
        log.info("joined the cluster", extra={"fields": fields})

    def _changed(self, chid: str, owner: Owner | None) -> None:
        if self.cluster is not None:
            self.cluster.registry_changed(chid, owner)

    def _lapsed(self, node: str) -> None:
        # A node whose lease lapsed may only hang (SIGSTOP, a stuck host) with its
        # legs still open, acknowledged by its kernel: they carry nothing more, and
        # its sessions must not stay online here, so its legs are cut as lost.
        for leg in list(self.relay.legs):
            if isinstance(leg, legs.LegOut | legs.LegIn) and leg.node == node:
                leg.node_gone()

    def _fenced(self) -> None:
        # From now on another node may own our chids: no session of ours may go on
        # as if it still held its chid (docs/protocol.md, "A cluster").
        sessions = list(self.relay.sessions)
        log.error("closing every session: the registry lease was lost", extra={"fields": {"sessions": len(sessions)}})
        for session in sessions:
            # Framed sessions get a close event, handshakes a FAIL they may retry elsewhere.
            code = "cluster_unavailable" if session.established else "unavailable"
            session.close(Outcome.CLUSTER_UNAVAILABLE, "this relay node lost its cluster registry", reason_code=code)

    async def leave(self) -> None:
        if self._server is not None:
            self._server.close()
        for leg in list(self.relay.legs):
            if isinstance(leg, legs.LegIn):
                leg.leave()
            else:
                leg.close(Outcome.SHUTDOWN)
        if self.cluster is not None:
            await self.cluster.close()
        if self.registry is not None:
            await self.registry.close(release=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
