"""The local router without sockets: end-of-stream counting, release order, per-chid watchers."""

from __future__ import annotations

from forwarding.routing.base import Sink
from forwarding.routing.local import LocalRouter


class FakeSink:
    def __init__(self, chid: str, recvers: tuple[str, ...] | None = None, framed: bool = False) -> None:
        self.chid = chid
        self.recvers = recvers
        self.framed = framed
        self.has_sent = True
        self.events: list[tuple[str, ...]] = []
        self.router: LocalRouter | None = None

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:
        self.events.append(("data", sender, bytes(data).decode()))
        return False

    def throttle(self, by: Sink) -> None: ...

    def add_waiter(self, sender: Sink) -> None: ...

    def presence(self, chid: str, online: bool) -> None:
        self.events.append(("online" if online else "offline", chid))

    def peer_left(self, chid: str) -> None:
        self.events.append(("peer_left", chid))
        assert self.router is not None
        self.router.release(self)  # as a hangup session does: close, and so leave

    def sender_finished(self, chid: str, last: bool) -> None:
        self.events.append(("eof", chid, "last" if last else "more"))

    def discard_waiter(self, sender: Sink) -> None: ...

    def unthrottle(self, by: Sink) -> None: ...

    def link_lost(self, desc: str, dropped: int = 0) -> None:
        self.events.append(("link_lost", desc))


def test_a_receiver_hears_last_only_when_its_last_named_sender_ends():
    r = LocalRouter()
    rx, a, b, caster = FakeSink("rx"), FakeSink("a", ("rx",)), FakeSink("b", ("rx",)), FakeSink("c")
    for s in (rx, a, b, caster):
        assert r.add(s)
    assert r.senders("rx") == 2
    r.finish(a)
    r.finish(a)  # twice is harmless
    r.release(caster)  # a broadcaster is nobody's sender
    r.release(b)  # leaving ends the stream first
    assert [e for e in rx.events if e[0] == "eof"] == [("eof", "a", "more"), ("eof", "b", "last")]
    assert r.senders("rx") == 0 and r.has_finished("a") and not r.has_finished("rx")


def test_moving_away_from_a_receiver_is_not_an_end_of_stream():
    r = LocalRouter()
    old, new, tx = FakeSink("old"), FakeSink("new"), FakeSink("tx", ("old",))
    for s in (old, new, tx):
        r.add(s)
    r.retarget(tx, ("new",))
    tx.recvers = ("new",)
    assert r.senders("old") == 0 and r.senders("new") == 1 and old.events == []


def test_framed_sinks_hear_of_a_broadcasters_end_raw_ones_do_not():
    r = LocalRouter()
    raw, framed, caster = FakeSink("raw"), FakeSink("framed", framed=True), FakeSink("caster")
    for s in (raw, framed, caster):
        r.add(s)
    r.release(caster)
    assert raw.events == [] and framed.events == [("eof", "caster", "more")]


def test_a_hangup_chain_releases_in_a_loop_in_order():
    r = LocalRouter()
    chain = [FakeSink(f"h{i}", (f"h{i + 1}",)) for i in range(2000)]  # far deeper than the recursion limit
    for s in chain:
        s.router = r
        r.add(s)
        r.hang_up_with(s, s.recvers or ())
    last = FakeSink("h2000")
    r.add(last)
    r.release(last)
    assert len(r) == 0
    assert all(("peer_left", f"h{i + 1}") in s.events for i, s in enumerate(chain))


def test_a_claim_calls_only_the_watchers_of_its_chid():
    r = LocalRouter()
    calls: list[str] = []
    for i in range(1000):
        r.watch((f"w{i}",), lambda chid, i=i: calls.append(f"{i}:{chid}"))
    r.add(FakeSink("w7"))
    assert calls == ["7:w7"]
    r.unwatch(("w8",), lambda chid: None)  # unknown callback: harmless


def test_when_offline_fires_once_at_release():
    r = LocalRouter()
    s = FakeSink("s")
    r.add(s)
    fired: list[int] = []
    r.when_offline("s", lambda: fired.append(1))
    r.when_offline("nobody", lambda: fired.append(2))  # not online: at once
    assert fired == [2]
    r.release(s)
    r.add(FakeSink("s"))
    r.release(r.local_sink("s"))  # type: ignore[arg-type]
    assert fired == [2, 1]
