"""The cluster router without sockets or NATS: a registry and legs that only record what they are asked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from forwarding.routing import cluster
from forwarding.routing.base import Sink
from forwarding.routing.cluster import ClusterRouter, Owner, RemoteSink, Unavailable

from .test_router import FakeSink


class FakeRegistry:
    def __init__(self) -> None:
        self.available = True
        self.times_out = False
        self.asked: list[str] = []
        self.taken: set[str] = set()
        self.revision = 0
        self.released: list[str] = []
        self.released_revisions: list[int] = []
        self.updates: list[tuple[str, Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {"b": {"leg": "127.0.0.1:2"}, "c": {"leg": "127.0.0.1:3"}}

    async def claim(self, chid: str, session: str, recvers: Any = (), framed: bool = False) -> Owner | None:
        self.asked.append(session)
        if self.times_out:
            raise Unavailable("timed out")
        if chid in self.taken:
            return None
        self.taken.add(chid)
        self.revision += 1
        return Owner("a", session, self.revision, recvers, framed)

    async def update(self, chid: str, owner: Owner, recvers: Any, cut: tuple[str, ...] = ()) -> Owner | None:
        self.revision += 1
        self.updates.append((chid, recvers, cut) if cut else (chid, recvers))
        return Owner(owner.node, owner.session, self.revision, recvers, owner.framed, cut=cut)

    async def release(self, chid: str, owner: Owner) -> bool:
        self.released_revisions.append(owner.revision)
        self.taken.discard(chid)
        self.released.append(chid)
        return True

    def node(self, node_id: str) -> dict[str, Any] | None:
        return self.nodes.get(node_id)


class FakeLeg(FakeSink):
    def __init__(self, sender: Sink, node: str, target: tuple[str, str] | None) -> None:
        super().__init__(f"leg:{sender.chid}>{node}")
        self.node, self.target = node, target
        self.done = False
        self.log: list[Any] = []
        self.named: dict[str, str | None] = {}
        self.closed: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.lingers = False  # its connection goes on after the hang-up (it is still connecting, or draining)

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:
        self.log.append(("data", sender, bytes(data)))
        return False

    def end_stream(self) -> None:
        self.log.append("fin")
        self.done = True

    def retarget(self, recvers: tuple[str, ...] | None) -> None:
        self.log.append(("recvers", recvers))

    def hang_up(self) -> None:
        self.log.append("hang_up")
        self.done = True
        if not self.lingers and not self.closed.done():
            self.closed.set_result(None)

    def name(self, chid: str, session: str | None) -> None:
        if not self.done and self.named.get(chid) != session:  # as LegOut: said when it changes
            self.named[chid] = session
            self.log.append(("name", chid, session))


def make() -> tuple[ClusterRouter, FakeRegistry, list[FakeLeg]]:
    registry = FakeRegistry()
    legs: list[FakeLeg] = []

    def open_leg(sender: Sink, session: str, node: str, address: str, target: tuple[str, str] | None) -> FakeLeg:
        leg = FakeLeg(sender, node, target)
        legs.append(leg)
        return leg

    return ClusterRouter("a", registry, open_leg), registry, legs  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The router spawns its registry calls as tasks: each test runs them on a loop of its own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.run_until_complete(asyncio.sleep(0))
    asyncio.set_event_loop(None)
    loop.close()


def claim(router: ClusterRouter, sink: FakeSink) -> str | None:
    answers: list[str | None] = []

    async def go() -> None:
        router.claim(sink, answers.append)
        while not answers:
            await asyncio.sleep(0)

    asyncio.get_event_loop().run_until_complete(go())
    return answers[0]


def remote(router: ClusterRouter, chid: str, node: str = "b", session: str = "", **kw: Any) -> None:
    router.registry_changed(chid, Owner(node, session or f"s-{chid}", 1, **kw))


def test_a_claim_is_the_registrys_and_refusals_carry_their_fail_code() -> None:
    router, registry, _ = make()
    assert claim(router, FakeSink("x")) is None
    assert claim(router, FakeSink("x")) == "chid_in_use"  # online here: no registry round trip
    registry.taken.add("y")
    assert claim(router, FakeSink("y")) == "chid_in_use"  # taken on another node
    registry.available = False
    assert claim(router, FakeSink("z")) == "unavailable"


def test_a_claim_whose_answer_was_lost_is_given_back_when_the_replica_shows_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    router, registry, _ = make()
    registry.times_out = True
    assert claim(router, FakeSink("x")) == "unavailable"
    # The request was written after all: the replica shows our node holding x.
    router.registry_changed("x", Owner("a", registry.asked[0], 7))
    loop.run_until_complete(asyncio.sleep(0))
    assert registry.released == ["x"]


def test_a_recvers_change_reaches_the_registry_and_the_release_uses_its_revision(
    loop: asyncio.AbstractEventLoop,
) -> None:
    router, registry, _ = make()
    tx = FakeSink("tx", ("a",), framed=True)
    assert claim(router, tx) is None
    router.retarget(tx, ("b",))
    tx.recvers = ("b",)
    router.release(tx)  # before the update is written: it waits for it
    loop.run_until_complete(asyncio.sleep(0.01))
    assert registry.updates == [("tx", ("b",))]
    assert registry.released == ["tx"] and registry.released_revisions == [registry.revision]


def test_another_nodes_recvers_change_moves_its_fan_in_here() -> None:
    router, _, _ = make()
    remote(router, "tx", recvers=("a",))
    assert router.senders("a") == 1 and router.senders("b") == 0
    router.registry_changed("tx", Owner("b", "s-tx", 2, ("b",)))
    assert router.senders("a") == 0 and router.senders("b") == 1


def test_other_nodes_sessions_are_online_here_with_presence_events() -> None:
    router, _, _ = make()
    watcher = FakeSink("w")
    assert claim(router, watcher) is None
    router.subscribe(watcher, None)
    remote(router, "far")
    assert router.is_online("far") and router.online(["far", "nobody"]) == ["far"]
    assert router.local_sink("far") is None  # not a session of this process
    router.registry_changed("far", None)
    assert not router.is_online("far")
    assert watcher.events == [("online", "far"), ("offline", "far")]


def test_bytes_for_several_receivers_on_one_node_take_one_leg_once() -> None:
    router, _, legs = make()
    tx = FakeSink("tx", ("r1", "r2", "r3", "gone"))
    assert claim(router, tx) is None
    remote(router, "r1", "b")
    remote(router, "r2", "b")
    remote(router, "r3", "c")
    assert router.route(tx, tx.recvers, b"hi") == 2  # "gone" is offline everywhere: counted
    assert sorted((leg.node, leg.target) for leg in legs) == [("b", None), ("c", None)]
    b, c = sorted(legs, key=lambda leg: leg.node)
    # Each leg first names the sessions on its node that the bytes are for.
    assert b.log == [("name", "r1", "s-r1"), ("name", "r2", "s-r2"), ("data", "tx", b"hi")]
    assert c.log == [("name", "r3", "s-r3"), ("data", "tx", b"hi")]


def test_a_frames_leg_names_a_receivers_new_session_in_its_stream() -> None:
    router, _, legs = make()
    tx = FakeSink("tx", ("r1", "r2"))
    assert claim(router, tx) is None
    remote(router, "r1", "b")
    remote(router, "r2", "b")
    router.route(tx, tx.recvers, b"one")
    router.registry_changed("r1", None)  # r1 left ...
    router.route(tx, tx.recvers, b"two")
    remote(router, "r1", "b", session="s-r1-again")  # ... and came back: a new session
    router.route(tx, tx.recvers, b"three")
    (leg,) = legs
    assert leg.log[2:] == [
        ("data", "tx", b"one"),
        ("name", "r1", None),
        ("data", "tx", b"two"),
        ("name", "r1", "s-r1-again"),
        ("data", "tx", b"three"),
    ]


def test_bytes_named_for_a_session_that_left_do_not_reach_the_new_owner_of_its_chid() -> None:
    router, _, _ = make()
    again, other = FakeSink("r1"), FakeSink("r2")
    assert claim(router, again) is None and claim(router, other) is None
    leg = RemoteSink("tx", "b", "s-tx", ("r1", "r2"), framed=False)
    sessions = {"r1": "the session that left", "r2": router.session_id(other) or ""}
    dropped = router.route_local(leg, ("r1", "r2"), b"late", None, sessions)
    assert again.events == [] and other.events == [("data", "tx", "late")]
    assert dropped == 4  # meant for the session that left: counted


def test_broadcast_takes_one_leg_per_node_with_sessions() -> None:
    router, _, legs = make()
    tx, local = FakeSink("tx"), FakeSink("here")
    assert claim(router, tx) is None and claim(router, local) is None
    remote(router, "r1", "b")
    remote(router, "r2", "b")
    router.route(tx, None, b"all")
    assert local.events == [("data", "tx", "all")]
    assert [(leg.node, leg.log) for leg in legs] == [("b", [("data", "tx", b"all")])]


def test_a_raw_pair_gets_a_raw_leg_to_the_receivers_session_and_a_new_one_for_a_new_owner() -> None:
    router, _, legs = make()
    tx = FakeSink("tx", ("rx",))
    assert claim(router, tx) is None
    remote(router, "rx", "b", "first")
    router.route(tx, tx.recvers, b"1")
    router.registry_changed("rx", None)
    remote(router, "rx", "b", "second")
    router.route(tx, tx.recvers, b"2")
    assert [leg.target for leg in legs] == [("rx", "first"), ("rx", "second")]
    assert legs[0].log == [("data", "tx", b"1"), "hang_up"]
    assert router.splice_target(tx, "rx") is legs[1]


def test_bytes_for_a_receiver_whose_node_said_it_left_are_dropped_here_without_a_new_leg() -> None:
    router, _, legs = make()
    tx = FakeSink("tx", ("rx",))
    assert claim(router, tx) is None
    remote(router, "rx", "b", "s1")
    router.route(tx, tx.recvers, b"1")
    router.receiver_left("rx", "s1")  # the leg's goodbye, before the replica's release
    legs[0].done = True
    assert router.route(tx, tx.recvers, b"22") == 2
    assert len(legs) == 1


def test_a_sender_that_never_sent_still_ends_its_stream_on_its_receivers_node(
    loop: asyncio.AbstractEventLoop,
) -> None:
    router, registry, legs = make()
    tx = FakeSink("tx", ("rx",))
    assert claim(router, tx) is None
    remote(router, "rx", "b")
    router.finish(tx)
    assert [leg.log for leg in legs] == [["fin"]]
    router.release(tx)
    assert legs[0].log == ["fin", "hang_up"]
    loop.run_until_complete(asyncio.sleep(0))
    assert registry.released == ["tx"]  # its chid is free cluster-wide again


def test_a_remote_senders_release_waits_for_its_leg_so_its_last_bytes_come_before_offline() -> None:
    router, _, _ = make()
    rx = FakeSink("rx")
    assert claim(router, rx) is None
    remote(router, "tx", recvers=("rx",))
    assert router.senders("rx") == 1  # the half-close rule counts senders on other nodes
    sender = router.leg_opened("b", "tx", "s-tx", ("rx",), False)
    router.registry_changed("tx", None)  # the replica is ahead of the leg
    assert router.is_online("tx")
    router.route_local(FakeSink("tx"), ("rx",), b"late")
    router.leg_finished(sender)
    router.leg_closed(sender)
    assert not router.is_online("tx") and router.senders("rx") == 0
    assert rx.events == [("data", "tx", "late"), ("eof", "tx", "last")]


def test_a_leg_the_replica_has_not_shown_yet_is_online_until_it_closes() -> None:
    router, _, _ = make()
    sender = router.leg_opened("b", "early", "s1", None, False)
    assert router.is_online("early")
    router.leg_closed(sender)
    assert not router.is_online("early")  # never confirmed by the replica: not left behind
    assert isinstance(sender, RemoteSink)


def test_a_claim_here_replaces_a_remote_owner_the_replica_has_not_released_yet() -> None:
    router, _, _ = make()
    remote(router, "moved")
    mine = FakeSink("moved")
    # The registry granted it: the other node released it, our replica lags.
    router.local.release(router.local.local_sink("moved"))  # type: ignore[arg-type]
    assert claim(router, mine) is None
    assert router.local_sink("moved") is mine


def test_a_create_lost_to_another_node_counts_as_a_lost_race_however_nats_py_reports_it() -> None:
    import nats.js.errors

    from forwarding.routing.registry import _lost_race

    # nats-py reads the key back after a lost create and may say "not found", with no err_code:
    # a sweep that met it crashed with AttributeError (caught by CI in the cluster tests).
    assert _lost_race(nats.js.errors.KeyNotFoundError())
    assert _lost_race(nats.js.errors.KeyWrongLastSequenceError())
    assert _lost_race(nats.js.errors.APIError(code=400, err_code=10071))
    assert not _lost_race(nats.js.errors.APIError(code=503, err_code=10008))
    assert not _lost_race(TimeoutError())


def test_a_failed_leg_is_written_to_the_registry_before_its_senders_release(
    loop: asyncio.AbstractEventLoop,
) -> None:
    router, registry, legs = make()
    remote(router, "rx")  # on node b
    tx = FakeSink("tx", ("rx",))
    assert claim(router, tx) is None
    router.route(tx, tx.recvers, b"lost")
    router.leg_lost(tx, legs[0], "connect", "cannot reach node b", 4)
    assert tx.events == [("link_lost", "cannot reach node b")]
    router.release(tx)  # as its session closes
    loop.run_until_complete(asyncio.sleep(0.01))
    assert registry.updates == [("tx", ("rx",), ("b",))]  # first the gap, then the release, on its revision
    assert registry.released == ["tx"] and registry.released_revisions == [registry.revision]


def test_a_stream_cut_to_this_node_closes_its_receivers_here_with_link_lost() -> None:
    router, _, _ = make()
    bob, carol, dave, erin = FakeSink("bob"), FakeSink("carol"), FakeSink("dave"), FakeSink("erin")
    for sink in (bob, carol, dave, erin):
        assert claim(router, sink) is None
    remote(router, "tx", recvers=("bob", "carol"))
    remote(router, "other", recvers=("dave",), cut=("c",))  # a gap to another node: not ours
    router.registry_changed("tx", Owner("b", "s-tx", 2, ("bob", "carol"), cut=("a",)))
    router.registry_changed("tx", Owner("b", "s-tx", 3, ("bob", "carol"), cut=("a",)))  # said once
    remote(router, "late", recvers=("erin",), cut=("a",))  # first seen with its gap
    for sink in (bob, carol, erin):
        assert [e[0] for e in sink.events] == ["link_lost"] and "has a gap" in sink.events[0][1]
    assert dave.events == []


def test_a_frames_leg_forgets_the_names_of_chids_its_sender_no_longer_names() -> None:
    """What the receiving node holds per leg stays bounded by the sender's recvers."""
    router, _, legs = make()
    tx = FakeSink("tx", ("r1", "r2"), framed=True)
    assert claim(router, tx) is None
    for chid in ("r1", "r2", "r3"):
        remote(router, chid, "b")
    router.route(tx, tx.recvers, b"x")
    (leg,) = legs
    router.retarget(tx, ("r2", "r3"))
    tx.recvers = ("r2", "r3")
    assert leg.log[3:] == [("recvers", ("r2", "r3")), ("name", "r1", None), ("name", "r3", "s-r3")]
    router.release(tx)
    assert leg.log[-1] == "hang_up"  # and no names after it


@pytest.mark.parametrize("leg_ends", [True, False])
def test_a_senders_release_waits_for_its_legs_so_its_last_bytes_reach_the_other_node_first(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch, leg_ends: bool
) -> None:
    """The other node hears of the release from the registry: before its leg arrived, its receiver would be
    ended there (5.1) and the bytes still on the way dropped."""
    monkeypatch.setattr(cluster, "LEGS_SETTLE", 0.2)
    router, registry, legs = make()
    remote(router, "rx", "b")
    tx = FakeSink("tx", ("rx",))
    assert claim(router, tx) is None
    router.route(tx, tx.recvers, b"last bytes")  # onto a leg that is still connecting
    legs[0].lingers = True
    router.finish(tx)
    router.release(tx)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert registry.released == []
    if leg_ends:
        legs[0].closed.set_result(None)  # the other node has all of it
        loop.run_until_complete(asyncio.sleep(0.01))
    else:  # a leg that never ends holds the chid a bounded while only
        loop.run_until_complete(asyncio.sleep(0.25))
    assert registry.released == ["tx"]
