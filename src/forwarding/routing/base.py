"""The routing interface: who is online, and who receives a sender's bytes.

A router knows sessions only as :class:`Sink` objects. The local router
(:mod:`.local`) keeps them in a dict; a clustered one can implement the same
interface over a message bus, and the server layer does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol


class Sink(Protocol):
    """A routable session, as a router sees it."""

    @property
    def chid(self) -> str: ...

    @property
    def recvers(self) -> tuple[str, ...] | None:
        """The chids this sink sends to (``None``: broadcast); read by the router at claim and finish."""
        ...

    @property
    def framed(self) -> bool:
        """Framed sinks hear of every broadcaster's end of stream, raw ones only of their named senders'."""
        ...

    @property
    def has_sent(self) -> bool:
        """Whether this sink has sent any data: a broadcaster that never did has no stream to end."""
        ...

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:
        """Queue ``data`` from chid ``sender`` for the client; ``True`` if the sink is now over its high-water mark.

        A raw session writes the bytes as they are; a framed one writes a data
        frame tagged with ``sender``.

        Must not release any sink synchronously (routers iterate their registry
        while delivering); a failed write closes the sink later.
        """
        ...

    def throttle(self, by: Sink) -> None:
        """Stop reading from this sender until ``by`` drains below its low-water mark.

        Implementations register with ``by.add_waiter(self)``.
        """
        ...

    def add_waiter(self, sender: Sink) -> None:
        """Call ``sender.unthrottle(self)`` once this sink has drained (or closed)."""
        ...

    def presence(self, chid: str, online: bool) -> None:
        """A chid this sink subscribed to came online or went offline."""
        ...

    def peer_left(self, chid: str) -> None:
        """A receiver this sink asked to hang up with (hs3 ``hangup``) went offline."""
        ...

    def sender_finished(self, chid: str, last: bool) -> None:
        """Sender ``chid``, which delivered to this sink, has finished sending (FIN, or it left).

        ``last``: no other online session that names this sink in its recvers is
        still sending. Called after the sender's last delivery and before it goes
        offline. Must not release any sink synchronously.
        """
        ...

    def discard_waiter(self, sender: Sink) -> None:
        """Forget ``sender``: it closed while paused on this sink."""
        ...

    def unthrottle(self, by: Sink) -> None:
        """``by`` has drained or closed; resume reading if nothing else holds this sender."""
        ...

    def link_lost(self, desc: str, dropped: int = 0) -> None:
        """A node-to-node connection that carried this sink's bytes broke (a cluster): close it, ``link_lost``.

        ``dropped``: bytes of its stream the connection still held, now counted as dropped."""
        ...


OnlineCallback = Callable[[str], None]
ClaimDone = Callable[[str | None], None]
"""A claim's answer: ``None`` (online) or the FAIL code of the refusal."""


class Router(Protocol):
    def claim(self, sink: Sink, done: ClaimDone) -> None:
        """Make ``sink`` online under its chid, then call ``done(None)``; or ``done(code)`` with a FAIL code:

        ``chid_in_use`` if the chid is taken, ``unavailable`` if a cluster's
        registry cannot be reached. ``done`` may be called before ``claim``
        returns (one process) or later, on the loop (a cluster asks its registry
        first). A sink closed before ``done(None)`` must still be released.
        """
        ...

    def release(self, sink: Sink) -> None:
        """Take ``sink`` offline; its chid is free at once. Releasing twice is harmless.

        A sink that had not finished sending is finished first, so its receivers
        hear of its end of stream before its ``offline`` event.
        """
        ...

    def finish(self, sink: Sink) -> None:
        """``sink`` has finished sending (its client sent FIN); it stays online as a receiver.

        Each receiver it names gets ``sender_finished(sink.chid, last)``; for a
        broadcaster that has sent data, every framed sink does (``last`` false).
        Finishing twice is harmless.
        """
        ...

    def senders(self, chid: str) -> int:
        """How many online sessions name ``chid`` in their recvers and have not finished sending."""
        ...

    def has_finished(self, chid: str) -> bool:
        """Whether ``chid`` is online and its session has finished sending (it is on its way out)."""
        ...

    def when_offline(self, chid: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, when ``chid`` next goes offline (at once if it is not online)."""
        ...

    def cancel_when_offline(self, chid: str, callback: Callable[[], None]) -> None: ...

    def retarget(self, sink: Sink, recvers: tuple[str, ...] | None) -> None:
        """``sink`` (online) is about to send to ``recvers`` instead of ``sink.recvers``.

        Call it before changing ``sink.recvers``. Moving away from a receiver is not
        an end of stream: that receiver is not told.
        """
        ...

    def online(self, chids: Iterable[str]) -> list[str]:
        """Those of ``chids`` that are online, in the order given."""
        ...

    def is_online(self, chid: str) -> bool: ...

    def local_sink(self, chid: str) -> Sink | None:
        """The sink for ``chid`` if it is a session of this process (services, visits)."""
        ...

    def splice_target(self, sender: Sink, chid: str) -> Sink | None:
        """Where ``sender``'s bytes for ``chid`` go, for the zero-copy path: a session of this process,
        or a cluster's node-to-node leg; ``None`` if neither."""
        ...

    def route(self, sender: Sink, recvers: tuple[str, ...] | None, data: bytes | memoryview) -> int:
        """Deliver ``data`` from ``sender`` to ``recvers`` (``None``: all others).

        Returns the number of bytes that could not be delivered because a named
        receiver was offline (``len(data)`` once per such receiver). Calls
        ``sender.throttle(sink)`` for each receiver that is over its high mark.
        """
        ...

    def hang_up_with(self, sink: Sink, chids: tuple[str, ...]) -> None:
        """Call ``sink.peer_left(chid)`` when any of ``chids`` goes offline, until ``sink`` is released.

        Replaces an earlier call for ``sink``."""
        ...

    def subscribe(self, sink: Sink, chids: tuple[str, ...] | None) -> None:
        """Call ``sink.presence(chid, online)`` when one of ``chids`` (``None``: any other chid)
        comes online or goes offline, until :meth:`unsubscribe` or release. Replaces an
        earlier subscription of ``sink``."""
        ...

    def unsubscribe(self, sink: Sink) -> None: ...

    def all_online(self, limit: int) -> list[str]:
        """Up to ``limit`` online chids (for a broadcast session's ``online`` command)."""
        ...

    def watch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None:
        """Call ``callback(chid)`` whenever one of ``chids`` comes online, until :meth:`unwatch`.

        Only the watchers of the chid that comes online are called: a claim costs
        the same with one session waiting or thousands.
        """
        ...

    def unwatch(self, chids: tuple[str, ...], callback: OnlineCallback) -> None: ...
