"""Who owns which chid, cluster-wide: a registry on NATS JetStream key-value buckets.

The only module that talks to NATS (../shared/design/cluster.md, 7.2). The router
that uses it is routing/cluster.py.

* Bucket ``chids``: ``c.<base64url(chid)>`` -> ``{"node", "session", "epoch", "recvers", "framed", "cut"}``. A claim
  is a create-if-absent (of two nodes racing, exactly one wins); a release is
  a delete on the claim's revision, so a node never deletes a newer owner's
  claim.
* Bucket ``nodes``: ``n.<node id>`` -> ``{"epoch", "leg"}``, the node's lease,
  written with a per-message TTL and renewed on its revision. When it lapses
  the server writes a marker every watcher sees; the survivor that wins
  ``sweep.<node>.<epoch>`` deletes the dead node's chids.
* **Fencing**: a node whose lease it has not renewed for ``lease_ttl - margin``
  calls its ``on_fenced`` callback (the relay closes its sessions) and is
  unavailable, because from then on another node may legitimately take its
  chids. While unavailable, :meth:`claim` raises :class:`Unavailable`. Once
  the registry answers again it takes a new lease as a new epoch (a new run)
  and serves again.
* Every node keeps a replica of both buckets by watching them (snapshot, then
  every change): :meth:`owner` and :meth:`on_change` answer from it, some
  milliseconds behind the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .cluster import Owner, Unavailable, new_session_id
from .tasks import cancel_all

__all__ = ["NatsRegistry", "Owner", "RegistryConfig", "Unavailable", "chid_key", "key_chid"]

log = logging.getLogger("forwarding.registry")

SWEEP_ATTEMPTS = 40
SWEEP_RETRY = 0.5
"""A sweep retries for 20 s: longer than JetStream takes to elect a new leader."""

CONFIGURATION_ERRORS = (10039, 10074)
"""JetStream's answers that no retry changes: not enabled for the account, replicas > 1 on one server."""
CLOSE_WAIT = 2.0
"""Seconds the lease's release and the connection's close may take at shutdown."""
WATCH_HEARTBEAT = 1.0
"""Seconds between the idle heartbeats of a replica's consumer: one that is lost with its NATS server is
found after two missed ones, and the watch starts again from a snapshot."""

CHIDS = "forwarding-chids"
NODES = "forwarding-nodes"


def chid_key(chid: str) -> str:
    """KV keys allow ``[-/_=.a-zA-Z0-9]``; chids are any printable Unicode (docs/protocol.md, 4.1)."""
    return "c." + base64.urlsafe_b64encode(chid.encode()).decode().rstrip("=")


def key_chid(key: str) -> str:
    data = key[2:]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()


WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's codes for a compare-and-swap that lost (nats-py raises them as a plain BadRequestError on deletes)."""


def _lost_race(exc: BaseException) -> bool:
    """A compare-and-swap found another revision: somebody else's claim, or a newer one.

    nats-py's ``create`` reads the key back after losing and may report the
    loss as "key not found" (see :meth:`NatsRegistry.claim`); its errors built
    that way carry no ``err_code``.
    """
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError | nats.js.errors.KeyNotFoundError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and getattr(exc, "err_code", None) in WRONG_LAST_SEQUENCE


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    servers: tuple[str, ...]
    node: str
    leg: str = ""
    """This node's leg listener, ``host:port``, for the others to reach its sessions."""
    lease_ttl: float = 20.0
    """Seconds a node's lease lives unrenewed; a crashed node's chids are free after it and a sweep.

    Longer than JetStream takes to elect a new stream leader when a NATS server
    dies (up to about 9 s here): a shorter lease fences every node then."""
    renew_every: float = 2.0
    fence_margin: float = 4.0
    """A node that has not renewed its lease for ``lease_ttl - fence_margin`` fences itself."""
    replicas: int = 1
    """Copies of each bucket in the NATS cluster (3 for a 3-server cluster: a server may die)."""
    memory: bool = False
    """Buckets in memory (one host, ``--workers``) rather than on file."""
    creds: str | None = None
    """A NATS credentials file."""
    tls: ssl.SSLContext | None = None
    """For ``tls://`` servers."""


class NatsRegistry:
    def __init__(
        self,
        config: RegistryConfig,
        on_change: Callable[[str, Owner | None], None] | None = None,
        on_fenced: Callable[[], None] | None = None,
        on_lapsed: Callable[[str], None] | None = None,
    ) -> None:
        """``on_lapsed(node)``: another node's lease is gone (it stopped, crashed or hangs)."""
        self.config = config
        self.epoch = new_session_id()
        self._on_change = on_change
        self._on_fenced = on_fenced
        self._on_lapsed = on_lapsed
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._chids: KeyValue | None = None
        self._nodes: KeyValue | None = None
        self._owners: dict[str, Owner] = {}
        self._live_nodes: dict[str, dict[str, Any]] = {}
        self._lease_revision = 0
        self._renewed_at = 0.0
        self._fenced = False
        self._synced = asyncio.Event()  # both replicas have their snapshot
        self._synced_count = 0
        self._tasks: list[asyncio.Task[None]] = []  # the lease keeper
        self._watches: list[asyncio.Task[None]] = []  # the two replicas
        self._sweeps: set[asyncio.Task[None]] = set()

    # -- life cycle ------------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> None:
        """Connect, make or bind the buckets, take the lease, and load both replicas."""
        loop = asyncio.get_running_loop()
        try:
            # Reconnects for ever once connected; the first connection has ``timeout``.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=list(self.config.servers),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    connect_timeout=2,
                    error_cb=self._nats_error,
                    reconnected_cb=self._reconnected,
                    user_credentials=self.config.creds,
                    tls=self.config.tls,
                ),
                timeout,
            )
        except TimeoutError:
            raise Unavailable(f"no NATS server answered within {timeout:g} s") from None
        js = self._js = self._nc.jetstream()
        storage = StorageType.MEMORY if self.config.memory else StorageType.FILE
        # An earlier run of this node id that died holds its lease for up to one TTL more.
        deadline = loop.time() + timeout + self.config.lease_ttl
        waiting_told = False
        while True:
            # A new cluster elects its JetStream meta leader first: retry until then.
            try:
                self._chids = await js.create_key_value(
                    KeyValueConfig(bucket=CHIDS, history=1, storage=storage, replicas=self.config.replicas)
                )
                self._nodes = await js.create_key_value(
                    KeyValueConfig(
                        bucket=NODES,
                        history=1,
                        storage=storage,
                        replicas=self.config.replicas,
                        limit_marker_ttl=self.config.lease_ttl,  # lapsed leases reach the watchers
                    )
                )
                await self._take_lease()  # a new replicated bucket may still be choosing its leader
                break
            except Unavailable as exc:
                if loop.time() > deadline:
                    raise
                if not waiting_told:
                    waiting_told = True
                    log.warning("waiting for the lease of this node id to lapse", extra={"fields": {"why": str(exc)}})
                await asyncio.sleep(0.25)
            except nats.js.errors.APIError as exc:
                if getattr(exc, "err_code", None) in CONFIGURATION_ERRORS:
                    raise Unavailable(exc.description or str(exc)) from None  # retrying will not help
                if loop.time() > deadline:
                    raise Unavailable(exc.description or str(exc)) from None
                await asyncio.sleep(0.2)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                if loop.time() > deadline:
                    raise Unavailable(str(exc) or type(exc).__name__) from None
                await asyncio.sleep(0.2)
        for kv in (self._chids, self._nodes):
            kv._js = _Heartbeats(js, WATCH_HEARTBEAT)  # type: ignore[assignment]
        self._start_watches()
        self._tasks = [asyncio.ensure_future(self._keep_lease())]
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def close(self, release: bool = True) -> None:
        """Stop; with ``release``, give the lease back so that the others need not wait for it to lapse."""
        await cancel_all([*self._tasks, *self._watches, *self._sweeps], CLOSE_WAIT)
        if self._nc is not None:
            if release and self._nodes is not None and self._lease_revision and self.available:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._nodes.delete(self._node_key(self.config.node), last=self._lease_revision), CLOSE_WAIT
                    )
            with contextlib.suppress(Exception):
                # A client still reconnecting would wait for a server to flush to: not on the way out.
                await asyncio.wait_for(self._nc.close(), CLOSE_WAIT)

    async def _nats_error(self, exc: Exception) -> None:
        log.debug("nats", extra={"fields": {"error": str(exc) or type(exc).__name__}})

    async def _reconnected(self) -> None:
        # Connected to another server: the replicas' consumers may have been on the
        # one that went, and nats-py would find out only after missed heartbeats.
        # Start both watches again now, from a snapshot.
        log.info("registry reconnected: reloading the replicas")
        for task in self._watches:
            task.cancel()
        self._start_watches(first=False)

    def _start_watches(self, first: bool = True) -> None:
        assert self._chids is not None and self._nodes is not None
        self._watches = [
            asyncio.ensure_future(self._watch(self._chids, self._chid_changed, self._chids_resync, first)),
            asyncio.ensure_future(self._watch(self._nodes, self._node_changed, self._nodes_resync, first)),
        ]

    # -- claims ----------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._nc is not None and self._nc.is_connected and not self._fenced

    async def claim(
        self, chid: str, session: str, recvers: tuple[str, ...] | None = (), framed: bool = False
    ) -> Owner | None:
        """Take ``chid`` for ``session`` on this node if nobody holds it; ``None`` if somebody does."""
        if not self.available or self._chids is None:
            raise Unavailable("the registry is unreachable")
        fields: dict[str, Any] = {"node": self.config.node, "session": session, "epoch": self.epoch}
        if recvers != ():  # the value stays small
            fields["recvers"] = None if recvers is None else list(recvers)
        if framed:
            fields["framed"] = True
        value = json.dumps(fields).encode()
        key = chid_key(chid)
        try:
            revision = await self._chids.create(key, value, validate_keys=False)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # Somebody else's create won. (nats-py's create reads the key back after
            # losing, to tell a live key from a deleted one; a read that reaches a
            # replica still without the winner's write says "not found": lost too.)
            stale = self._owners.get(chid)
            if stale is None:
                return None
            # An earlier run of this very node id left it behind (we hold the id's lease now,
            # so that run is over); or its node's lease has lapsed and the sweep has not come yet.
            leftover = stale.node == self.config.node and stale.epoch != self.epoch
            if not leftover and (stale.node in self._live_nodes or not await self._lease_gone(stale.node)):
                return None
            # Its node's lease has lapsed and the sweep has not come yet: take it over.
            try:
                revision = await self._chids.update(key, value, last=stale.revision, validate_keys=False)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
        owner = Owner(self.config.node, session, revision, recvers, framed, self.epoch)
        self._set_owner(chid, owner)
        return owner

    async def update(
        self, chid: str, owner: Owner, recvers: tuple[str, ...] | None, cut: tuple[str, ...] = ()
    ) -> Owner | None:
        """Write ``owner``'s claim again with new recvers (a framed session's ``recvers`` command) and the
        nodes its stream has a gap to (``cut``), on its revision; the new owner, or ``None`` if the claim
        is no longer ``owner``'s."""
        if not self.available or self._chids is None:
            raise Unavailable("the registry is unreachable")
        fields: dict[str, Any] = {"node": owner.node, "session": owner.session, "epoch": owner.epoch}
        if recvers != ():
            fields["recvers"] = None if recvers is None else list(recvers)
        if owner.framed:
            fields["framed"] = True
        if cut:
            fields["cut"] = list(cut)
        try:
            revision = await self._chids.update(
                chid_key(chid), json.dumps(fields).encode(), last=owner.revision, validate_keys=False
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
        new = Owner(owner.node, owner.session, revision, recvers, owner.framed, owner.epoch, cut)
        self._set_owner(chid, new)
        return new

    async def release(self, chid: str, owner: Owner) -> bool:
        """Delete the claim if it is still ``owner``'s; ``False`` if it was not (taken over, swept)."""
        if self._chids is None:
            return False
        try:
            await self._chids.delete(chid_key(chid), last=owner.revision)
        except nats.js.errors.APIError as exc:
            if _lost_race(exc):
                return False
            raise
        if self._owners.get(chid) == owner:
            self._set_owner(chid, None)
        return True

    async def _lease_gone(self, node: str) -> bool:
        """Whether ``node``'s lease is gone, read from the bucket itself: the replica may lag behind a new node."""
        assert self._nodes is not None
        try:
            await self._nodes.get(self._node_key(node))
        except nats.js.errors.NotFoundError:  # no such key, or deleted, or purged by its TTL
            return True
        return False

    def owner(self, chid: str) -> Owner | None:
        """From the local replica: some milliseconds behind the cluster."""
        return self._owners.get(chid)

    def node(self, node_id: str) -> dict[str, Any] | None:
        """A live node's lease (its ``leg`` address), or ``None`` once its lease has lapsed."""
        return self._live_nodes.get(node_id)

    def _set_owner(self, chid: str, owner: Owner | None) -> None:
        old = self._owners.get(chid)
        if owner is None:
            if old is None:
                return
            del self._owners[chid]
        else:
            if old is not None and old.revision >= owner.revision:
                return  # the watch brings what we already know, or something older
            self._owners[chid] = owner
        if self._on_change is not None:
            self._on_change(chid, owner)

    # -- replicas ----------------------------------------------------------------

    async def _watch(
        self,
        kv: KeyValue,
        changed: Callable[[Any], Coroutine[Any, Any, None]],
        resync: Callable[[set[str]], Coroutine[Any, Any, None]],
        first: bool = True,
    ) -> None:
        """Keep a replica of ``kv``: its snapshot, then every change; again from a snapshot after a failure.

        A new snapshot holds only the keys that exist: ``resync`` gets their set
        and forgets what went away unseen meanwhile.
        """
        while True:
            try:
                watcher = await kv.watchall()
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("registry watch failed, retrying", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(0.5)
                continue
            seen: set[str] | None = set()
            try:
                async for entry in watcher:
                    if entry is None:  # the snapshot is complete
                        if seen is not None:
                            await resync(seen)
                            seen = None
                            if first:
                                first = False
                                self._count_synced()
                        continue
                    if seen is not None:
                        seen.add(entry.key)
                    await changed(entry)
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("registry watch restarted", extra={"fields": {"error": str(exc)}})
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped

    async def _chids_resync(self, keys: set[str]) -> None:
        for chid in [c for c in self._owners if chid_key(c) not in keys]:
            self._set_owner(chid, None)

    async def _nodes_resync(self, keys: set[str]) -> None:
        for node in [n for n in self._live_nodes if self._node_key(n) not in keys]:
            lapsed = self._live_nodes.pop(node)
            if node != self.config.node:
                self._start_sweep(node, str(lapsed.get("epoch", "")))

    def _count_synced(self) -> None:
        self._synced_count += 1
        if self._synced_count == 2:
            self._synced.set()

    async def _chid_changed(self, entry: Any) -> None:
        chid = key_chid(entry.key)
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            current = self._owners.get(chid)
            if current is not None and current.revision < entry.revision:
                self._set_owner(chid, None)
            return
        value = json.loads(entry.value)
        recvers = value.get("recvers", [])
        # Interned: every node holds one entry per session of the cluster, and the
        # node ids and epochs are few (benchmarks/cluster.py measures the replica).
        self._set_owner(
            chid,
            Owner(
                sys.intern(value["node"]),
                value["session"],
                entry.revision,
                None if recvers is None else tuple(recvers),
                bool(value.get("framed", False)),
                sys.intern(str(value.get("epoch", ""))),
                tuple(value.get("cut", ())),
            ),
        )

    async def _node_changed(self, entry: Any) -> None:
        if not entry.key.startswith("n."):
            return
        node = entry.key[2:]
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            lapsed = self._live_nodes.pop(node, None)
            if lapsed is not None and node != self.config.node:
                self._start_sweep(node, str(lapsed.get("epoch", "")))
            return
        self._live_nodes[node] = json.loads(entry.value)

    def _start_sweep(self, node: str, epoch: str) -> None:
        if self._on_lapsed is not None:
            self._on_lapsed(node)
        # A task of its own: the watch must go on meanwhile, and a sweep may retry.
        task = asyncio.ensure_future(self._sweep(node, epoch))
        self._sweeps.add(task)
        task.add_done_callback(self._sweep_done)

    def _sweep_done(self, task: asyncio.Task[None]) -> None:
        self._sweeps.discard(task)
        if not task.cancelled() and task.exception() is not None:  # said once, not "never retrieved"
            log.error("sweep failed", exc_info=task.exception())

    async def _sweep(self, node: str, epoch: str) -> None:
        """A node's lease lapsed: the one survivor that wins the sweep key frees its chids.

        Retried while NATS answers with errors (a server died, a stream is
        electing its leader). A chid the sweep misses (its sweeper died too)
        is still taken over at its next claim (see :meth:`claim`).
        """
        assert self._nodes is not None and self._chids is not None
        for _ in range(SWEEP_ATTEMPTS):
            try:
                await self._nodes.create(f"sweep.{node}.{epoch}", b"1", msg_ttl=max(1.0, self.config.lease_ttl))
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if _lost_race(exc):
                    return  # another survivor sweeps
                await asyncio.sleep(SWEEP_RETRY)
        else:
            log.warning("sweep not started: the registry did not answer", extra={"fields": {"node": node}})
            return
        freed = 0
        for chid, owner in list(self._owners.items()):
            if owner.node != node or owner.epoch != epoch:
                continue  # the same id may be back already, as a new epoch with new claims
            for _ in range(SWEEP_ATTEMPTS):
                try:
                    await self._chids.delete(chid_key(chid), last=owner.revision)
                    freed += 1
                    if self._owners.get(chid) == owner:  # as release(): known here before the watch says it
                        self._set_owner(chid, None)
                    break
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    if _lost_race(exc):  # somebody took it over already
                        break
                    await asyncio.sleep(SWEEP_RETRY)
        log.info("swept a lapsed node's chids", extra={"fields": {"node": node, "chids": freed}})

    # -- the lease -----------------------------------------------------------------

    @staticmethod
    def _node_key(node: str) -> str:
        return "n." + node

    def _lease_value(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "leg": self.config.leg}).encode()

    async def _take_lease(self) -> None:
        assert self._nodes is not None
        key = self._node_key(self.config.node)
        ttl = self.config.lease_ttl
        try:
            self._lease_revision = await self._nodes.create(key, self._lease_value(), msg_ttl=ttl)
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._nodes.get(key)
            if entry.value is None or json.loads(entry.value).get("epoch") != self.epoch or entry.revision is None:
                # An earlier run of this node id that did not release its lease (or
                # another process with the same id): wait for it to lapse rather
                # than share an identity.
                raise Unavailable(f"node id {self.config.node!r} holds a lease: is it running elsewhere?") from None
            self._lease_revision = entry.revision  # our own create, whose answer was lost
        self._renewed_at = asyncio.get_running_loop().time()

    async def _renew(self) -> int:
        """Write the lease again on its revision, with a fresh TTL; returns the new revision.

        ``KeyValue.update`` takes no TTL, so this is its publish with the
        expected-last-sequence header, as nats-py's own ``update`` sends it.
        """
        assert self._js is not None
        headers = {"Nats-Expected-Last-Subject-Sequence": str(self._lease_revision)}
        subject = f"$KV.{NODES}.{self._node_key(self.config.node)}"
        ack = await self._js.publish(subject, self._lease_value(), headers=headers, msg_ttl=self.config.lease_ttl)
        return int(ack.seq)

    async def _keep_lease(self) -> None:
        try:
            while True:
                await self._keep_lease_loop()
                await self._rejoin()
        except asyncio.CancelledError:
            raise
        except BaseException:
            # A lease keeper that dies unnoticed would let the lease lapse while
            # this node went on serving its chids: fence instead.
            log.exception("the lease keeper failed")
            self._fence()
            raise

    async def _keep_lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        while not self._fenced:
            await asyncio.sleep(cfg.renew_every)
            try:
                async with asyncio.timeout(cfg.renew_every):  # not wait_for: 3.11's can lose a cancel
                    self._lease_revision = await self._renew()
                self._renewed_at = loop.time()
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                late = loop.time() - self._renewed_at
                log.warning("lease not renewed", extra={"fields": {"error": str(exc) or type(exc).__name__,
                                                                   "seconds": round(late, 1)}})  # fmt: skip
                if late >= cfg.lease_ttl - cfg.fence_margin or _lost_race(exc):
                    self._fence()

    async def _rejoin(self) -> None:
        """Fenced: take a new lease, as a new run of this node id, once the registry answers again.

        The old run's sessions are closed and its chids are the old epoch's: the
        other nodes sweep them when its lease lapses, and a claim here takes over
        any they have not (see :meth:`claim`). Until then, claims are refused.
        """
        cfg = self.config
        while self._fenced:
            await asyncio.sleep(cfg.renew_every)
            if self._nc is None or not self._nc.is_connected:
                continue
            epoch, self.epoch = self.epoch, new_session_id()
            try:
                # Longer than a renewal may take: a create that times out but was written
                # leaves a lease of an epoch we no longer hold, to be waited out.
                async with asyncio.timeout(max(cfg.renew_every, cfg.lease_ttl / 2)):
                    await self._take_lease()
            except (Unavailable, TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                self.epoch = epoch  # not joined: the next try is a new epoch again
                log.debug("rejoin not yet", extra={"fields": {"error": str(exc) or type(exc).__name__}})
                continue
            self._fenced = False
            log.warning("rejoined the cluster", extra={"fields": {"node": cfg.node, "epoch": self.epoch}})

    def _fence(self) -> None:
        if self._fenced:
            return
        self._fenced = True
        log.error("fenced: the lease could not be renewed; this node's chids may be taken elsewhere")
        if self._on_fenced is not None:
            self._on_fenced()

    @property
    def fenced(self) -> bool:
        return self._fenced

    @property
    def owners(self) -> Sequence[str]:
        return list(self._owners)


class _Heartbeats:
    """A bucket's JetStream context, whose ``subscribe`` asks for idle heartbeats every ``seconds``.

    nats-py's ``KeyValue.watch`` passes none, so its ordered consumer takes the
    default of 5 s and finds itself lost (its NATS server died) only after two
    missed: a node's replica, and with it presence across nodes, would stand
    still for 10-20 s. Everything else goes to the context unchanged.
    """

    def __init__(self, js: JetStreamContext, seconds: float) -> None:
        self._js = js
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("idle_heartbeat", self._seconds)
        return await self._js.subscribe(*args, **kwargs)
