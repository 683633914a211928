"""The in-process router: a dict from chid to session."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Mapping

from .base import ClaimDone, OnlineCallback, Sink


class LocalRouter:
    """Routes between the sessions of one server process.

    ``route`` is the forwarding hot path: one dict lookup and one ``deliver``
    per receiver, nothing else.
    """

    def __init__(self) -> None:
        self._sinks: dict[str, Sink] = {}
        self._watchers: dict[str, list[OnlineCallback]] = {}  # chid -> callbacks waiting for it
        self._hangups: dict[str, set[Sink]] = {}  # chid -> sinks to hang up when it leaves
        self._hangup_chids: dict[Sink, tuple[str, ...]] = {}
        self._presence: dict[str, set[Sink]] = {}  # chid -> sinks subscribed to it
        self._presence_all: set[Sink] = set()  # sinks subscribed to everyone
        self._presence_of: dict[Sink, tuple[str, ...] | None] = {}
        # End of stream (docs/protocol.md, 5.1): per chid, how many online sessions
        # that name it are still sending; a count, not a set, for idle memory.
        self._fan_in: dict[str, int] = {}
        self._finished: set[Sink] = set()  # online, but done sending
        self._framed: set[Sink] = set()  # told of every broadcaster's end of stream
        self._offline_watch: dict[str, list[Callable[[], None]]] = {}
        # Releases that a release set off (hangup partners closing), done one after
        # another by the outermost call instead of nested: a chain of hangups is a
        # loop, not a recursion as deep as the chain.
        self._releasing: collections.deque[Sink] | None = None

    def __len__(self) -> int:
        return len(self._sinks)

    def claim(self, sink: Sink, done: ClaimDone) -> None:
        done(None if self.add(sink) else "chid_in_use")

    def add(self, sink: Sink) -> bool:
        """Make ``sink`` online at once; ``False`` if its chid is taken."""
        chid = sink.chid
        if chid in self._sinks:
            return False
        self._sinks[chid] = sink
        self._count_fan_in(sink.recvers, 1)
        if sink.framed:
            self._framed.add(sink)
        watchers = self._watchers.get(chid)
        if watchers:
            for callback in list(watchers):
                callback(chid)
        self._announce(sink, True)
        return True

    def release(self, sink: Sink) -> None:
        if self._releasing is not None:  # inside another release: it takes this one next
            self._releasing.append(sink)
            return
        self._releasing = collections.deque((sink,))
        try:
            while self._releasing:
                self._release(self._releasing.popleft())
        finally:
            self._releasing = None

    def _release(self, sink: Sink) -> None:
        if self._sinks.get(sink.chid) is not sink:
            return
        self.finish(sink)  # its receivers hear of its end of stream before it goes offline
        self._finished.discard(sink)
        self._framed.discard(sink)
        self.unsubscribe(sink)
        for chid in self._hangup_chids.pop(sink, ()):
            bound = self._hangups.get(chid)
            if bound is not None:
                bound.discard(sink)
                if not bound:
                    del self._hangups[chid]
        del self._sinks[sink.chid]
        self._announce(sink, False)
        # At once, not later: a new owner of this chid must never find the
        # old partner still online.
        for partner in list(self._hangups.get(sink.chid, ())):
            partner.peer_left(sink.chid)
        for callback in self._offline_watch.pop(sink.chid, ()):
            callback()

    def has_finished(self, chid: str) -> bool:
        sink = self._sinks.get(chid)
        return sink is not None and sink in self._finished

    def when_offline(self, chid: str, callback: Callable[[], None]) -> None:
        if chid not in self._sinks:
            callback()
        else:
            self._offline_watch.setdefault(chid, []).append(callback)

    def cancel_when_offline(self, chid: str, callback: Callable[[], None]) -> None:
        callbacks = self._offline_watch.get(chid)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)
            if not callbacks:
                del self._offline_watch[chid]

    def finish(self, sink: Sink) -> None:
        if sink in self._finished or self._sinks.get(sink.chid) is not sink:
            return
        self._finished.add(sink)
        recvers = sink.recvers
        origin = sink.chid
        if recvers is None:
            # Raw receivers cannot tell one broadcaster's end from another's: only
            # framed ones hear of it (as an eof event), at the cost of one event each.
            if not sink.has_sent:
                return
            for other in list(self._framed):
                if other is not sink:
                    other.sender_finished(origin, False)
            return
        self._count_fan_in(recvers, -1)
        fan_in, sinks = self._fan_in, self._sinks
        for chid in recvers:
            receiver = sinks.get(chid)
            if receiver is not None:
                receiver.sender_finished(origin, chid not in fan_in)

    def senders(self, chid: str) -> int:
        return self._fan_in.get(chid, 0)

    def retarget(self, sink: Sink, recvers: tuple[str, ...] | None) -> None:
        if sink not in self._finished and self._sinks.get(sink.chid) is sink:
            self._count_fan_in(sink.recvers, -1)
            self._count_fan_in(recvers, 1)

    def _count_fan_in(self, recvers: tuple[str, ...] | None, step: int) -> None:
        fan_in = self._fan_in
        for chid in recvers or ():
            n = fan_in.get(chid, 0) + step
            if n:
                fan_in[chid] = n
            else:
                del fan_in[chid]

    def hang_up_with(self, sink: Sink, chids: tuple[str, ...]) -> None:
        for chid in self._hangup_chids.get(sink, ()):  # replaces what it asked before
            bound = self._hangups.get(chid)
            if bound is not None:
                bound.discard(sink)
                if not bound:
                    del self._hangups[chid]
        self._hangup_chids[sink] = chids
        for chid in chids:
            self._hangups.setdefault(chid, set()).add(sink)

    def subscribe(self, sink: Sink, chids: tuple[str, ...] | None) -> None:
        self.unsubscribe(sink)
        self._presence_of[sink] = chids
        if chids is None:
            self._presence_all.add(sink)
        else:
            for chid in chids:
                self._presence.setdefault(chid, set()).add(sink)

    def unsubscribe(self, sink: Sink) -> None:
        if sink not in self._presence_of:
            return
        chids = self._presence_of.pop(sink)
        if chids is None:
            self._presence_all.discard(sink)
            return
        for chid in chids:
            bound = self._presence.get(chid)
            if bound is not None:
                bound.discard(sink)
                if not bound:
                    del self._presence[chid]

    def _announce(self, sink: Sink, online: bool) -> None:
        chid = sink.chid
        watchers = self._presence.get(chid)
        if watchers:
            for other in list(watchers):
                if other is not sink:
                    other.presence(chid, online)
        if self._presence_all:  # most relays have no subscribers: no copy, no loop
            for other in list(self._presence_all):
                if other is not sink:
                    other.presence(chid, online)

    def all_online(self, limit: int) -> list[str]:
        return list(itertools.islice(self._sinks, limit))

    def online(self, chids: Iterable[str]) -> list[str]:
        return [chid for chid in chids if chid in self._sinks]

    def is_online(self, chid: str) -> bool:
        return chid in self._sinks

    def local_sink(self, chid: str) -> Sink | None:
        return self._sinks.get(chid)

    def splice_target(self, sender: Sink, chid: str) -> Sink | None:
        return self._sinks.get(chid)

    @property
    def sinks(self) -> Mapping[str, Sink]:
        """Every online sink by chid (the cluster router keeps other nodes' sessions here too)."""
        return self._sinks

    def route(self, sender: Sink, recvers: tuple[str, ...] | None, data: bytes | memoryview) -> int:
        origin = sender.chid
        if recvers is None:
            # Safe to iterate in place: Sink.deliver never releases a sink synchronously.
            for other in self._sinks.values():
                if other is not sender and other.deliver(data, origin):
                    sender.throttle(other)
            return 0
        dropped = 0
        sinks = self._sinks
        for chid in recvers:
            sink = sinks.get(chid)
            if sink is None:
                dropped += len(data)
            elif sink.deliver(data, origin):
                sender.throttle(sink)
        return dropped

    def watch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None:
        for chid in chids:
            self._watchers.setdefault(chid, []).append(callback)

    def unwatch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None:
        for chid in chids:
            callbacks = self._watchers.get(chid)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._watchers[chid]
