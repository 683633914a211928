"""The clustered router: many relay nodes as one (../shared/design/cluster.md, 7).

One :class:`~.local.LocalRouter` holds every session this node knows of: its
own, and those of other nodes as :class:`RemoteSink` entries that the
registry's replica keeps (a claim anywhere adds one, a release removes it).
So presence events, ``online``, ``wait``, ``hangup`` and the end-of-stream
counts work across nodes with the local router's code, a few milliseconds
behind the cluster.

Bytes for a remote receiver go over a **leg**: a TCP connection from this
node to the receiver's node carrying one sender session's stream (server/legs.py).
A leg is a :class:`Sink` here, so flow control is the local one: a leg over
its mark throttles its sender. The receiving node runs the leg as a sender
that reaches only its own sessions (:meth:`ClusterRouter.route_local`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .base import ClaimDone, OnlineCallback, Sink
from .local import LocalRouter
from .tasks import cancel_all

log = logging.getLogger("forwarding.cluster")


class Unavailable(Exception):
    """The registry cannot be reached, or this node has fenced itself: refuse new claims (FAIL ``unavailable``)."""


@dataclass(frozen=True, slots=True)
class Owner:
    node: str
    """The node id that holds the chid."""
    session: str
    """Random per session: a leg names it, so a later owner of the same chid is never reached by mistake."""
    revision: int
    """The claim's revision in the bucket: release and takeover compare-and-swap on it."""
    recvers: tuple[str, ...] | None = ()
    """The session's recvers at its claim (``None``: broadcast): other nodes count its fan-in."""
    framed: bool = False
    epoch: str = ""
    """The run of the node that claimed it: a node restarted with the same id is a new epoch."""
    cut: tuple[str, ...] = ()
    """Nodes this session's stream to which has a gap (a leg to them failed), written before its release:
    their receivers of it are closed with ``link_lost`` then, not given a FIN as if the stream were whole."""


def new_session_id() -> str:
    return os.urandom(16).hex()


LEGS_SETTLE = 2.0
"""Seconds a sender's release waits for its legs to end: until then its bytes may still be on the way, and the
other node, told of the release first, would end its receivers' streams before they arrived."""
RELEASE_ATTEMPTS = 20
RELEASE_RETRY = 0.5
ABANDONED_FOR = 120.0
CLOSE_WAIT = 2.0
"""Seconds the background tasks (releases under way) may take to end on the way out."""


class Registry(Protocol):
    """Who owns which chid, cluster-wide (routing/registry.py is the NATS one)."""

    @property
    def available(self) -> bool: ...

    async def claim(
        self, chid: str, session: str, recvers: tuple[str, ...] | None = (), framed: bool = False
    ) -> Owner | None: ...

    async def release(self, chid: str, owner: Owner) -> bool: ...

    async def update(
        self, chid: str, owner: Owner, recvers: tuple[str, ...] | None, cut: tuple[str, ...] = ()
    ) -> Owner | None: ...

    def node(self, node_id: str) -> dict[str, Any] | None: ...


class Leg(Sink, Protocol):
    """One sender session's stream to one other node."""

    @property
    def node(self) -> str:
        """The node it goes to."""
        ...

    @property
    def done(self) -> bool:
        """Ended (by us, or its receiver left): a new one is opened if more bytes come."""
        ...

    @property
    def target(self) -> tuple[str, str] | None:
        """The one receiver (chid, session) of a raw leg; ``None``: a frames leg."""
        ...

    def end_stream(self) -> None:
        """The sender has finished sending: FIN after what is queued."""
        ...

    def retarget(self, recvers: tuple[str, ...] | None) -> None:
        """A frames leg: the sender's recvers change here in its stream."""
        ...

    def name(self, chid: str, session: str | None) -> None:
        """A frames leg: its bytes for ``chid`` from here on are for that session only (``None``: nobody).

        In the stream, in order with the data, so that bytes meant for a
        receiver that has left never reach a new owner of its chid.
        """
        ...

    def hang_up(self) -> None:
        """The sender left: close after what is queued."""
        ...

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once its connection has ended, or never came."""
        ...


OpenLeg = Callable[[Sink, str, str, str, "tuple[str, str] | None"], Leg]
"""``open_leg(sender, sender_session, node, leg_address, target)``: a new leg, connecting."""


class RemoteSink:
    """A session on another node as this node's router holds it: online, with its recvers.

    Nothing is delivered to it (a leg carries the bytes) and it never pauses
    anyone; the calls a router makes on a sink are no-ops here, because the
    session's own node makes them on the session.
    """

    __slots__ = (
        "chid", "node", "session", "revision", "recvers", "framed", "has_sent", "confirmed", "gone", "left", "legs_in",
        "cut",
    )  # fmt: skip

    def __init__(self, chid: str, node: str, session: str, recvers: tuple[str, ...] | None, framed: bool) -> None:
        self.chid = chid
        self.node = node
        self.session = session
        self.revision = 0
        self.recvers = recvers
        self.framed = framed
        self.has_sent = False
        self.confirmed = False  # the registry's replica has shown it (it may be first known from a leg)
        self.gone = False  # the replica has shown its release
        self.left = False  # its node said so on a leg to it, before the replica: bytes for it are dropped here
        self.legs_in = 0  # legs from it into this node, still open: its release waits for them
        self.cut = False  # its node wrote that its stream to this node has a gap: whom it fed here are closed

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:  # pragma: no cover - routed to a leg
        return False

    def throttle(self, by: Sink) -> None:
        pass

    def add_waiter(self, sender: Sink) -> None:
        pass

    def presence(self, chid: str, online: bool) -> None:
        pass

    def peer_left(self, chid: str) -> None:
        pass

    def sender_finished(self, chid: str, last: bool) -> None:
        pass

    def discard_waiter(self, sender: Sink) -> None:
        pass

    def unthrottle(self, by: Sink) -> None:
        pass

    def link_lost(self, desc: str, dropped: int = 0) -> None:
        pass

    def __repr__(self) -> str:
        return f"RemoteSink({self.chid!r} on {self.node})"


class ClusterRouter:
    """The :class:`~.base.Router` of one node of a cluster."""

    def __init__(self, node: str, registry: Registry, open_leg: OpenLeg) -> None:
        self.node = node
        self.registry = registry
        self._open_leg = open_leg
        self.local = LocalRouter()
        self._owned: dict[Sink, Owner] = {}  # this node's sessions, online cluster-wide
        self._claiming: set[str] = set()  # chids this node is asking the registry for
        self._remote: dict[str, RemoteSink] = {}  # other nodes' sessions, by session id
        self._node_sinks: dict[str, int] = {}  # remote node -> its sessions online (broadcast legs go there)
        self._legs: dict[Sink, dict[str, Leg]] = {}  # sender -> node -> its leg there
        self._naming: dict[str, set[Leg]] = {}  # chid -> the frames legs whose sender names it
        self._tasks: set[asyncio.Task[None]] = set()
        self._recvers_due: dict[Sink, tuple[str, ...] | None] = {}  # recvers to write to the registry
        self._cut: dict[Sink, set[str]] = {}  # senders whose legs failed -> the nodes, written at release
        self._leaving: dict[Sink, list[asyncio.Future[None]]] = {}  # released senders -> their legs' ends
        self._abandoned: dict[str, float] = {}  # session ids of claims whose answer was lost -> when
        self.leg_failures: dict[str, int] = {}
        """Legs that broke, by reason: for metrics."""
        self.claims = 0
        self.claim_seconds = 0.0
        """Registry round trips of the claims answered, and their total time: its latency, for metrics."""

    def __len__(self) -> int:
        return len(self._owned)

    # -- claims --------------------------------------------------------------

    def claim(self, sink: Sink, done: ClaimDone) -> None:
        chid = sink.chid
        if not self.registry.available:
            done("unavailable")
            return
        if self.local.is_online(chid) or chid in self._claiming:
            done("chid_in_use")
            return
        self._claiming.add(chid)
        self._spawn(self._claim(sink, done))

    async def _claim(self, sink: Sink, done: ClaimDone) -> None:
        chid = sink.chid
        began = time.monotonic()
        session = new_session_id()
        try:
            owner = await self.registry.claim(chid, session, sink.recvers, sink.framed)
            self.claims += 1
            self.claim_seconds += time.monotonic() - began
        except Exception as exc:  # Unavailable, or a NATS error the registry did not foresee: not an answer
            if not isinstance(exc, Unavailable):
                log.error("claim failed", exc_info=exc, extra={"fields": {"chid": chid}})
            log.warning("claim refused: registry unavailable", extra={"fields": {"chid": chid, "error": str(exc)}})
            # A request that timed out may still have been written: if the replica
            # ever shows this claim, it is given back (registry_changed).
            self._abandon(session)
            done("unavailable")
            return
        finally:
            self._claiming.discard(chid)
        if owner is None:
            done("chid_in_use")
            return
        stale = self.local.local_sink(chid)
        if isinstance(stale, RemoteSink):  # its release has not reached our replica yet: the registry knows better
            self._drop_remote(stale)
        if not self.local.add(sink):  # pragma: no cover - the check above and _claiming keep it free
            self._spawn(self._release_claim(chid, owner))
            done("chid_in_use")
            return
        self._owned[sink] = owner
        done(None)

    def _abandon(self, session: str) -> None:
        now = time.monotonic()
        # Bounded: an answer lost longer ago than a lease's life is not coming.
        for old in [s for s, at in self._abandoned.items() if now - at > ABANDONED_FOR]:
            del self._abandoned[old]
        self._abandoned[session] = now

    def session_id(self, sink: Sink) -> str | None:
        owner = self._owned.get(sink)
        return owner.session if owner is not None else None

    def release(self, sink: Sink) -> None:
        legs = self._legs.pop(sink, None)
        for leg in (legs or {}).values():
            leg.hang_up()
        if legs:
            self._unindex(sink, legs.values())  # after the hang-up: no names written into a leg that ends
        self.local.release(sink)
        owner = self._owned.pop(sink, None)
        if owner is None:
            self._cut.pop(sink, None)
            return
        ending = [leg.closed for leg in (legs or {}).values() if not leg.closed.done()]
        if sink in self._recvers_due or sink in self._cut:
            if ending:
                self._leaving[sink] = ending  # for the writer, which releases the claim
            if sink not in self._recvers_due:
                # The nodes its failed legs went to learn of the gap before the release
                # (one key, in order): a FIN there would say the stream was whole.
                self._recvers_due[sink] = sink.recvers
                self._spawn(self._write_recvers(sink, owner))
        else:
            self._spawn(self._release_claim(sink.chid, owner, ending))

    async def _release_claim(self, chid: str, owner: Owner, ending: list[asyncio.Future[None]] | None = None) -> None:
        """Give ``owner``'s claim back, once ``ending`` (its session's legs) have ended or a while has passed."""
        if ending:
            # The other nodes learn of the release from the registry, and of the last bytes
            # from the legs: the release waits for the legs, or a receiver there could be
            # ended (5.1) before its sender's bytes arrived, if a leg was still connecting.
            await asyncio.wait(ending, timeout=LEGS_SETTLE)
        for _ in range(RELEASE_ATTEMPTS):
            try:
                await self.registry.release(chid, owner)
                return
            except Exception as exc:  # NATS errors of many kinds: retry while the lease lives
                log.debug("release failed, retrying", extra={"fields": {"chid": chid, "error": str(exc)}})
                await asyncio.sleep(RELEASE_RETRY)
        # The lease's lapse and the survivors' sweep free it in the end.
        log.warning("release not written: the registry did not answer", extra={"fields": {"chid": chid}})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # said once, not "never retrieved"
            log.error("registry task failed", exc_info=task.exception())

    async def close(self) -> None:
        await cancel_all(self._tasks, CLOSE_WAIT)

    # -- the replica: other nodes' sessions ------------------------------------

    def registry_changed(self, chid: str, owner: Owner | None) -> None:
        """The registry's replica saw a claim (``owner``) or a release (``None``) of ``chid``."""
        current = self.local.local_sink(chid)
        if owner is None:
            if isinstance(current, RemoteSink):
                current.gone = True
                if not current.legs_in:
                    self._drop_remote(current)
                else:
                    self._renamed(chid)  # it stays a sender here a while, but takes nothing more
            return
        if owner.node == self.node:
            if self._abandoned.pop(owner.session, None) is not None:
                self._spawn(self._release_claim(chid, owner))  # a claim whose answer we never had
            return  # our own claim, known since it was made
        if isinstance(current, RemoteSink):
            if current.session == owner.session:
                current.confirmed = True
                current.revision = owner.revision
                if self.node in owner.cut:
                    self._stream_cut(current)
                if current.recvers != owner.recvers and not current.legs_in:  # a leg says it in the stream
                    self.leg_retargeted(current, owner.recvers)
                    if log.isEnabledFor(logging.DEBUG):
                        recvers = "*" if owner.recvers is None else ",".join(owner.recvers)
                        log.debug("remote recvers changed", extra={"fields": {"chid": chid, "recvers": recvers}})
                return
            self._drop_remote(current)  # a newer claim: the old one was released meanwhile
        elif current is not None:
            # Ours, by the registry someone else's: only after our lease lapsed (fencing closes ours).
            log.warning("chid claimed elsewhere while online here", extra={"fields": {"chid": chid}})
            return
        sink = RemoteSink(chid, owner.node, owner.session, owner.recvers, owner.framed)
        sink.confirmed = True
        sink.revision = owner.revision
        if self._add_remote(sink) and self.node in owner.cut:
            self._stream_cut(sink)  # its claim and the gap reach us in one write

    def _stream_cut(self, sender: RemoteSink) -> None:
        """``sender``'s node could not deliver all of its stream here: close whom it was for, as a broken leg does."""
        if sender.cut:
            return
        sender.cut = True
        desc = f"the stream from {sender.chid} on node {sender.node} has a gap: a leg to this node failed"
        targets = self._local_targets(sender.recvers)
        fields = {"from": sender.chid, "node": sender.node, "sessions": len(targets)}
        log.warning("stream cut", extra={"fields": fields})
        for sink in targets:
            sink.link_lost(desc)

    def _add_remote(self, sink: RemoteSink) -> bool:
        if not self.local.add(sink):
            return False
        self._remote[sink.session] = sink
        self._node_sinks[sink.node] = self._node_sinks.get(sink.node, 0) + 1
        self._renamed(sink.chid)
        return True

    def _drop_remote(self, sink: RemoteSink) -> None:
        if self._remote.get(sink.session) is not sink:
            return
        del self._remote[sink.session]
        n = self._node_sinks[sink.node] - 1
        if n:
            self._node_sinks[sink.node] = n
        else:
            del self._node_sinks[sink.node]
        self.local.release(sink)
        self._renamed(sink.chid)

    # -- legs into this node ---------------------------------------------------

    def leg_opened(
        self, node: str, chid: str, session: str, recvers: tuple[str, ...] | None, framed: bool
    ) -> RemoteSink:
        """A leg from ``session`` (chid ``chid`` on ``node``) arrived: the remote sender it feeds from."""
        sink = self._remote.get(session)
        if sink is None:
            sink = RemoteSink(chid, node, session, recvers, framed)
            current = self.local.local_sink(chid)
            if isinstance(current, RemoteSink):  # an older owner our replica still shows: superseded
                self._drop_remote(current)
            # Known from the leg before the replica: online until the replica or the leg says otherwise.
            self._add_remote(sink)
        sink.legs_in += 1
        sink.has_sent = True
        return sink

    def leg_finished(self, sink: RemoteSink) -> None:
        """The leg's FIN: its sender has finished sending (its receivers here hear of it now)."""
        if self._remote.get(sink.session) is sink:
            self.local.finish(sink)

    def leg_retargeted(self, sink: RemoteSink, recvers: tuple[str, ...] | None) -> None:
        if self._remote.get(sink.session) is sink:
            self.local.retarget(sink, recvers)
        sink.recvers = recvers

    def leg_closed(self, sink: RemoteSink) -> None:
        sink.legs_in -= 1
        if not sink.legs_in and (sink.gone or not sink.confirmed):
            self._drop_remote(sink)

    def target_session(self, chid: str, session: str) -> Sink | None:
        """This node's session ``session`` under ``chid``, if it is still the one online."""
        sink = self.local.local_sink(chid)
        if sink is None or isinstance(sink, RemoteSink):
            return None
        owner = self._owned.get(sink)
        return sink if owner is not None and owner.session == session else None

    def route_local(
        self,
        leg: Sink,
        recvers: tuple[str, ...] | None,
        data: bytes | memoryview,
        fed: set[Sink] | None = None,
        sessions: Mapping[str, str] | None = None,
    ) -> int:
        """A leg's bytes to this node's own sessions among ``recvers`` (``None``: all of them); the bytes
        dropped.

        ``fed`` collects the sessions reached: if the leg breaks, their streams have a gap.
        ``sessions``, from a leg that names them: each chid's bytes are for that session only,
        so that a new owner of a chid never gets bytes meant for one that has left.
        """
        origin = leg.chid
        targets = self._local_targets(recvers)
        dropped = 0
        if sessions is not None and recvers is not None:
            owned = self._owned
            mine = [s for s in targets if (o := owned.get(s)) is not None and sessions.get(s.chid) == o.session]
            # Meant for a session that has left (the sending node did not know yet):
            # counted here. Chids it did not name it counted as offline itself.
            dropped = len(data) * (sum(1 for c in recvers if c in sessions) - len(mine))
            targets = mine
        for sink in targets:
            if sink.deliver(data, origin):
                leg.throttle(sink)
        if fed is not None:
            fed.update(targets)
        return dropped

    def _local_targets(self, recvers: tuple[str, ...] | None) -> list[Sink]:
        """This node's own sessions among ``recvers`` (``None``: all of them)."""
        sinks = self.local.sinks
        if recvers is None:
            return [s for s in sinks.values() if type(s) is not RemoteSink]
        return [s for s in (sinks.get(c) for c in recvers) if s is not None and type(s) is not RemoteSink]

    # -- legs out of this node -------------------------------------------------

    def _leg(self, sender: Sink, node: str, target: RemoteSink | None) -> Leg | None:
        legs = self._legs.get(sender)
        if legs is None:
            legs = self._legs[sender] = {}
        leg = legs.get(node)
        raw = target is not None and not sender.framed and sender.recvers is not None and len(sender.recvers) == 1
        if leg is not None and not leg.done:
            if not raw or leg.target == (target.chid, target.session):  # type: ignore[union-attr]
                return leg
            leg.hang_up()  # its receiver is another session now
        if leg is not None:
            self._unindex(sender, (leg,))  # replaced
        if raw and target is not None and target.left:
            return None  # it has left, the replica does not know yet: drop here (counted), no new leg
        info = self.registry.node(node)
        session = self.session_id(sender)
        if info is None or session is None or not info.get("leg"):
            return None  # the node's lease lapsed: its sessions are on their way out
        wanted = (target.chid, target.session) if raw and target is not None else None
        leg = legs[node] = self._open_leg(sender, session, node, str(info["leg"]), wanted)
        if wanted is None and sender.recvers is not None:
            self._index(leg, sender.recvers, True)
        return leg

    def _index(self, leg: Leg, chids: Iterable[str], on: bool) -> None:
        """Keep ``leg`` among the frames legs naming ``chids`` (and name their sessions on it) or not."""
        for chid in chids:
            if on:
                self._naming.setdefault(chid, set()).add(leg)
                self._name_on(leg, chid)
            else:
                legs = self._naming.get(chid)
                if legs is not None:
                    legs.discard(leg)
                    if not legs:
                        del self._naming[chid]
                # Said in the stream too: the receiving node then holds a name only
                # for each chid the sender names now (at most MAX_RECVERS).
                leg.name(chid, None)

    def _name_on(self, leg: Leg, chid: str) -> None:
        sink = self.local.local_sink(chid)
        on_its_node = type(sink) is RemoteSink and sink.node == leg.node and not sink.gone
        leg.name(chid, sink.session if on_its_node else None)  # type: ignore[union-attr]

    def _renamed(self, chid: str) -> None:
        """``chid`` changed owner in this node's view: the frames legs naming it say so in their streams."""
        for leg in self._naming.get(chid, ()):
            self._name_on(leg, chid)

    def _unindex(self, sender: Sink, legs: Iterable[Leg]) -> None:
        if sender.recvers is not None:
            for leg in legs:
                if leg.target is None:
                    self._index(leg, sender.recvers, False)

    def receiver_left(self, chid: str, session: str) -> None:
        """A raw leg's receiving node ended it because that receiver went offline."""
        sink = self.local.local_sink(chid)
        if type(sink) is RemoteSink and sink.session == session:
            sink.left = True

    def leg_lost(self, sender: Sink, leg: Leg, reason: str, desc: str, dropped: int) -> None:
        """A leg broke: its sender's stream has a gap it cannot be told about."""
        self.leg_failures[reason] = self.leg_failures.get(reason, 0) + 1
        legs = self._legs.get(sender)
        if legs is not None:
            for node, mine in list(legs.items()):
                if mine is leg:
                    del legs[node]
        self._unindex(sender, (leg,))
        if sender in self._owned:
            self._cut.setdefault(sender, set()).add(leg.node)
        sender.link_lost(desc, dropped)

    def legs_open(self) -> int:
        return sum(len(legs) for legs in self._legs.values())

    def route(self, sender: Sink, recvers: tuple[str, ...] | None, data: bytes | memoryview) -> int:
        origin = sender.chid
        sinks = self.local.sinks
        if recvers is None:
            for other in sinks.values():
                if other is not sender and type(other) is not RemoteSink and other.deliver(data, origin):
                    sender.throttle(other)
            for node in list(self._node_sinks):
                leg = self._leg(sender, node, None)
                if leg is not None and leg.deliver(data, origin):
                    sender.throttle(leg)
            return 0
        dropped = 0
        reached: set[str] | None = None
        for chid in recvers:
            sink = sinks.get(chid)
            if sink is None:
                dropped += len(data)
            elif type(sink) is RemoteSink:
                if reached is None:
                    reached = set()
                elif sink.node in reached:
                    continue  # one leg per node carries the bytes once for all its receivers
                reached.add(sink.node)
                leg = self._leg(sender, sink.node, sink)
                if leg is None:
                    dropped += len(data)
                elif leg.deliver(data, origin):
                    sender.throttle(leg)
            elif sink.deliver(data, origin):
                sender.throttle(sink)
        return dropped

    def remote_node(self, chid: str) -> str | None:
        """The node whose session holds ``chid``, if it is another node's and online by the replica."""
        sink = self.local.local_sink(chid)
        if type(sink) is RemoteSink and sink.confirmed and not sink.gone and not sink.left:
            return sink.node
        return None

    def splice_target(self, sender: Sink, chid: str) -> Sink | None:
        sink = self.local.local_sink(chid)
        if type(sink) is not RemoteSink:
            return sink
        legs = self._legs.get(sender)
        leg = legs.get(sink.node) if legs is not None else None
        return leg if leg is not None and not leg.done and leg.target is not None else None

    # -- the rest of the Router interface --------------------------------------

    def finish(self, sink: Sink) -> None:
        self.local.finish(sink)
        if sink not in self._owned:
            return
        legs = self._legs.get(sink, {})
        # Receivers on nodes this sender never sent to must hear of its end too
        # (5.1): a leg that carries nothing but the FIN.
        for chid in sink.recvers or ():
            remote = self.local.local_sink(chid)
            if type(remote) is RemoteSink and remote.node not in legs:
                self._leg(sink, remote.node, remote)
        for leg in self._legs.get(sink, {}).values():
            leg.end_stream()

    def retarget(self, sink: Sink, recvers: tuple[str, ...] | None) -> None:
        self.local.retarget(sink, recvers)
        old = set(sink.recvers or ())  # still the old ones
        new = set(recvers or ())
        for leg in list(self._legs.get(sink, {}).values()):
            leg.retarget(recvers)  # in the stream, in order with the data
            if leg.target is None:  # then the names of what changed
                self._index(leg, [c for c in old if c not in new], False)
                self._index(leg, [c for c in (recvers or ()) if c not in old], True)
        if sink in self._owned:
            # And in the registry, for the nodes without a leg from it: they count
            # who still names their sessions (the half-close rule, 5.1).
            writing = sink in self._recvers_due
            self._recvers_due[sink] = recvers
            if not writing:
                self._spawn(self._write_recvers(sink, self._owned[sink]))

    async def _write_recvers(self, sink: Sink, owner: Owner) -> None:
        """Write the latest recvers of ``sink`` until none is due; release the claim if it left meanwhile."""
        while sink in self._recvers_due:
            recvers = self._recvers_due[sink]
            cut = tuple(sorted(self._cut.get(sink, ())))
            try:
                new = await self.registry.update(sink.chid, owner, recvers, cut)
            except Unavailable:
                # The other nodes keep the old recvers (its legs carry the new ones);
                # a gap not written here ends there as a FIN (docs/protocol.md, 15).
                new = None
            if new is not None:
                owner = new
                if sink in self._owned:
                    self._owned[sink] = new
            if self._recvers_due.get(sink) is recvers:
                del self._recvers_due[sink]
        if sink not in self._owned:  # released while we wrote: on the latest revision
            self._cut.pop(sink, None)
            await self._release_claim(sink.chid, owner, self._leaving.pop(sink, None))

    def senders(self, chid: str) -> int:
        return self.local.senders(chid)

    def has_finished(self, chid: str) -> bool:
        return self.local.has_finished(chid)

    def when_offline(self, chid: str, callback: Callable[[], None]) -> None:
        self.local.when_offline(chid, callback)

    def cancel_when_offline(self, chid: str, callback: Callable[[], None]) -> None:
        self.local.cancel_when_offline(chid, callback)

    def online(self, chids: Iterable[str]) -> list[str]:
        return self.local.online(chids)

    def is_online(self, chid: str) -> bool:
        return self.local.is_online(chid)

    def local_sink(self, chid: str) -> Sink | None:
        sink = self.local.local_sink(chid)
        return None if type(sink) is RemoteSink else sink

    def hang_up_with(self, sink: Sink, chids: tuple[str, ...]) -> None:
        self.local.hang_up_with(sink, chids)

    def subscribe(self, sink: Sink, chids: tuple[str, ...] | None) -> None:
        self.local.subscribe(sink, chids)

    def unsubscribe(self, sink: Sink) -> None:
        self.local.unsubscribe(sink)

    def all_online(self, limit: int) -> list[str]:
        return self.local.all_online(limit)

    def watch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None:
        self.local.watch(chids, callback)

    def unwatch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None:
        self.local.unwatch(chids, callback)

    @property
    def remote_sessions(self) -> Mapping[str, RemoteSink]:
        return self._remote
