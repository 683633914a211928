"""Legs: node-to-node connections that carry one sender session's bytes (../shared/design/cluster.md, 7.3).

A leg is opened by the sender's node on the first byte for a receiver on
another node, one per (sender session, node). It starts with one header line,
sealed with the cluster secret (step ``leg1``)::

    {"v": 1, "node": "a", "from": CHID, "sid": SESSION, "recvers": [...] | null,
     "framed": false, "mode": "raw" | "frames", "to": [CHID, SESSION], "ts": UNIX}

* ``raw``: a raw sender with one receiver. The rest of the leg is the sender's
  byte stream, for the one receiver session ``to`` (named by session id, so a
  later owner of the chid is never reached). Both nodes splice it.
* ``frames``: anything else (fan-out, broadcast, framed senders). The rest is
  client-to-server frames of docs/protocol.md 12: data frames, and ``recvers``
  commands where the sender's recvers change, in stream order. The receiving
  node delivers each frame to its own sessions among the recvers.

The leg's FIN is the sender's end of stream. The receiving node writes one
byte back, ``G``, before it ends a leg on purpose (its receiver left, or it is
shutting down): a leg that ends without it, or breaks, has lost bytes, and
both ends close the sessions it carried with ``link_lost``.

Both ends are :class:`~.session.Session` subclasses, so a leg gets the session's
flow control, slow-receiver timer and splice pump for free: to the sender's
node a leg is one more receiver, to the receiving node one more sender.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

from ..protocol.frames import FrameError, FrameParser, control_frame, data_header
from ..protocol.linebuffer import LineBuffer, LineTooLong
from ..protocol.messages import MAX_RECVERS
from ..protocol.sealing import Sealer, SealError
from ..routing.base import Router, Sink
from ..routing.cluster import ClusterRouter, Leg, RemoteSink
from . import handshaking
from .outcome import Outcome
from .session import Session

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.legs")

STEP = "leg1"
GOODBYE = b"G"
NAME = "to"
"""The frames-leg command that names the session a chid's bytes are for (docs/protocol.md, 15)."""
MAX_HEADER = 64 * 1024
MAX_LEG_FRAME = 16 << 20
"""A frames leg carries the sender's reads (at most 256 KiB) or its frames (at most its node's --max-frame)."""
CLOCK_SKEW = 60.0
"""A header this much older or newer than the receiving node's clock is refused: a recorded one cannot be replayed."""
LEG_IDLE = 10 * 365 * 86400.0
"""Legs have no idle timeout of their own: the sender's session has one, and TCP keepalive watches the leg."""
KEEPALIVE = (5, 1, 3)
"""TCP keepalive on legs: idle seconds, interval, probes. A dead node's idle legs are found in about 8 s."""
USER_TIMEOUT_MS = 10_000
"""TCP_USER_TIMEOUT: a leg whose sent bytes go unacknowledged this long is broken (a black-holed node)."""
CONNECT_TIMEOUT = 5.0
"""Seconds a leg may take to connect. The sender is paused meanwhile (one read queued), so a node whose
leg port drops SYNs must not hold it for the kernel's two minutes of retries."""


def _tune(sock: socket.socket | None) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, probes = KEEPALIVE
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", probes)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


_seen: dict[bytes, float] = {}
"""Leg headers accepted in the last ``2 * CLOCK_SKEW`` seconds, oldest first: each is accepted once."""


def _first_use(line: bytes, now: float) -> bool:
    """Whether this (authenticated) header line is new; remembers it for as long as its timestamp passes."""
    while _seen:
        oldest = next(iter(_seen))
        if _seen[oldest] > now:
            break
        del _seen[oldest]
    nonce = line[:16]  # the base64 of the random 12-byte nonce: unique per sealed line
    if nonce in _seen:
        return False
    _seen[nonce] = now + 2 * CLOCK_SKEW
    return True


def seal_header(sealer: Sealer, fields: dict[str, Any]) -> bytes:
    return sealer.seal(json.dumps(fields, separators=(",", ":")).encode(), STEP)


class LegOut(Session):
    """One sender session's stream to one other node: a receiver, to this node's router."""

    LEG = True
    __slots__ = (
        "_cluster", "_sender", "_node", "_target", "_framing", "_header", "_ended", "_hung_up", "_goodbye", "_named",
        "closed",
    )  # fmt: skip

    def __init__(
        self,
        relay: Relay,
        cluster: ClusterRouter,
        sender: Sink,
        node: str,
        header: bytes,
        target: tuple[str, str] | None,
    ) -> None:
        super().__init__(relay)
        self._cluster = cluster
        self._sender = sender
        self._node = node
        self._target = target
        self._framing = target is None
        self._header = header
        self._ended = False  # the sender finished: FIN sent (or due once connected)
        self._hung_up = False  # the sender left: closing
        self._goodbye = False  # the other node ended the leg on purpose
        self._named: dict[str, str | None] = {}  # a frames leg: chid -> the session its bytes are for
        self.closed: asyncio.Future[None] = relay.loop.create_future()
        """Done once the connection has ended (or never came): the other node has all it will get."""
        self._tls_pending = False
        self._spliceable = relay.leg_splice and target is not None
        self.chid = f"leg:{sender.chid}>{node}"
        self.idle_timeout = LEG_IDLE

    # -- Leg, for the cluster router ----------------------------------------------

    @property
    def done(self) -> bool:
        return self._ended or self._hung_up or self._goodbye or self.outcome is not None

    @property
    def target(self) -> tuple[str, str] | None:
        return self._target

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:
        if self.done:
            self.dropped += len(data)
            return False
        self.bytes_out += len(data)
        self.last_active = self._loop.time()
        self._write((data_header(len(data)), data) if self._framing else (data,))
        return self._write_paused

    def retarget(self, recvers: tuple[str, ...] | None) -> None:
        if self._framing and not self.done:
            message = {"cmd": "recvers", "id": 0, "recvers": None if recvers is None else list(recvers)}
            self._write((control_frame(message),))

    def name(self, chid: str, session: str | None) -> None:
        if not self._framing or self.done or self._named.get(chid) == session:
            return
        if session is None:
            self._named.pop(chid, None)
        else:
            self._named[chid] = session
        if log.isEnabledFor(logging.DEBUG):
            log.debug("leg names", extra={"fields": {"leg": self.chid, "chid": chid, "sid": session or "-"}})
        self._write((control_frame({"cmd": NAME, "chid": chid, "sid": session}),))

    def end_stream(self) -> None:
        if self._ended or self.outcome is not None:
            return
        self._ended = True
        if self.established:
            assert self._transport is not None
            self._shut_down_output(self._transport)

    def hang_up(self) -> None:
        self._hung_up = True
        if self.established and self.outcome is None:
            self.outcome = Outcome.CLIENT_CLOSED
            self._close()  # what is queued, then FIN

    def link_lost(self, desc: str, dropped: int = 0) -> None:  # pragma: no cover - a leg carries no leg
        pass

    @property
    def node(self) -> str:
        return self._node

    def node_gone(self) -> None:
        """The other node's lease lapsed: whatever this leg still holds will not arrive."""
        self._lost("lapsed", f"node {self._node} stopped renewing its lease")
        if self._transport is not None:
            self._transport.abort()

    # -- the connection -------------------------------------------------------------

    def connect_failed(self, exc: BaseException) -> None:
        if self.outcome is None:
            self.outcome, self.desc = Outcome.RESET, str(exc) or type(exc).__name__
            self.dropped += self.bytes_out  # queued for the connection that never came: all of it lost
            self._teardown()
            self._lost("connect", f"cannot reach node {self._node}: {self.desc}")
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(self._config.write_buffer_high, self._config.write_buffer_low)
        _tune(transport.get_extra_info("socket"))
        self.peer = self._node
        self._relay.legs.add(self)
        if self.outcome is not None:  # pragma: no cover - closed while connecting
            transport.abort()
            return
        transport.write(self._header)
        self._header = b""
        handshaking.establish(self, hs4=b"")
        if self._ended:
            self._shut_down_output(transport)
        if self._hung_up:
            self.outcome = Outcome.CLIENT_CLOSED
            self._close()

    def data_received(self, data: bytes) -> None:
        if GOODBYE in data and not self._goodbye:
            self._goodbye = True  # the other node ended it on purpose: nothing was lost in the leg itself
            if self._target is not None:
                self._cluster.receiver_left(*self._target)

    def eof_received(self) -> bool:
        if not self._goodbye and not (self._ended or self._hung_up):
            self._lost("closed", f"node {self._node} closed the leg")
        if self.outcome is None:
            self.outcome = Outcome.CLIENT_CLOSED
        self._close()
        return False

    def too_slow(self) -> None:
        super().too_slow()
        self._lost("stalled", f"node {self._node} took nothing for {self._config.slow_receiver_timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        # Ended on purpose by either side, or after the sender's FIN went out whole: nothing lost.
        if not self._goodbye and not self._hung_up and not (self._ended and exc is None):
            self._lost("reset", f"the leg to node {self._node} broke" + (f": {exc}" if exc else ""))
        if self.outcome is None:
            self.outcome = Outcome.RESET if exc is not None else Outcome.CLIENT_CLOSED
        self._teardown()
        self._relay.legs.discard(self)
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def _lost(self, reason: str, desc: str) -> None:
        sender, self._sender = self._sender, None  # type: ignore[assignment]  # once
        if sender is None or self._hung_up:
            return
        if self._transport is not None:
            self.dropped += self._transport.get_write_buffer_size()
        log.warning("leg lost", extra={"fields": {"node": self._node, "reason": reason, "dropped": self.dropped}})
        self._cluster.leg_lost(sender, self, reason, desc, self.dropped)


class _LegView:
    """The router as an incoming leg sees it: it reaches this node's own sessions only."""

    __slots__ = ("_cluster", "_leg")

    def __init__(self, cluster: ClusterRouter, leg: LegIn) -> None:
        self._cluster = cluster
        self._leg = leg

    def route(self, sender: Sink, recvers: tuple[str, ...] | None, data: bytes | memoryview) -> int:
        target = self._leg.target
        if target is None:
            return self._cluster.route_local(sender, recvers, data, self._leg.fed, self._leg.sessions)
        if target.outcome is not None:  # left; the goodbye is on its way
            return len(data)
        if target.deliver(data, sender.chid):
            sender.throttle(target)
        return 0

    def splice_target(self, sender: Sink, chid: str) -> Sink | None:
        return self._leg.target

    def local_sink(self, chid: str) -> Sink | None:
        return self._cluster.local_sink(chid)

    def retarget(self, sink: Sink, recvers: tuple[str, ...] | None) -> None:
        remote = self._leg.remote
        if remote is not None:
            self._cluster.leg_retargeted(remote, recvers)

    def online(self, chids: Any) -> list[str]:
        return self._cluster.online(chids)

    def all_online(self, limit: int) -> list[str]:
        return self._cluster.all_online(limit)

    def is_online(self, chid: str) -> bool:
        return self._cluster.is_online(chid)

    def when_offline(self, chid: str, callback: Any) -> None:
        self._cluster.when_offline(chid, callback)

    def cancel_when_offline(self, chid: str, callback: Any) -> None:
        self._cluster.cancel_when_offline(chid, callback)

    def senders(self, chid: str) -> int:  # pragma: no cover - a leg's input end is its own
        return 0

    def finish(self, sink: Sink) -> None:  # pragma: no cover - LegIn._input_ended instead
        pass

    def release(self, sink: Sink) -> None:  # pragma: no cover - a leg is never claimed
        pass

    def subscribe(self, sink: Sink, chids: tuple[str, ...] | None) -> None:  # a leg hears of nobody
        pass

    def unsubscribe(self, sink: Sink) -> None:
        pass

    def unwatch(self, chids: tuple[str, ...], callback: Any) -> None:  # pragma: no cover
        pass


class LegIn(Session):
    """A leg arriving from another node: one remote sender, delivering to this node's sessions."""

    LEG = True
    __slots__ = ("_cluster", "remote", "fed", "_lines", "target", "_said_goodbye", "_node", "_finished", "sessions")

    def __init__(self, relay: Relay, cluster: ClusterRouter) -> None:
        super().__init__(relay)
        self._router = cast(Router, _LegView(cluster, self))
        self._cluster = cluster
        self.remote: RemoteSink | None = None
        self.fed: set[Sink] | None = None  # frames legs: the sessions it delivered to (closed if it breaks)
        self._lines: LineBuffer | None = LineBuffer(MAX_HEADER)
        self.target: Session | None = None  # a raw leg's one receiver
        self.sessions: dict[str, str] | None = None  # a frames leg that names sessions: chid -> the one it is for
        self._said_goodbye = False
        self._finished = False
        self._node = "?"
        self._tls_pending = False
        self._spliceable = relay.leg_splice
        self.idle_timeout = LEG_IDLE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(self._config.write_buffer_high, self._config.write_buffer_low)
        _tune(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._relay.legs.add(self)
        # The header has the handshake's deadline: an unauthenticated connection must not stay.
        self._relay.deadlines.add(self, self.opened_at + self._config.limits.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        lines = self._lines
        if lines is None:
            super().data_received(data)
            return
        if self.outcome is not None:
            self.discarded += len(data)
            return
        lines.feed(data)
        try:
            line = lines.next_line()
        except LineTooLong as exc:
            self._refuse_leg(str(exc))
            return
        if line is None:
            return
        self._lines = None
        try:
            sealer = self._relay.leg_sealer
            assert sealer is not None  # a cluster node has the cluster secret
            fields = json.loads(sealer.open(line, STEP))
            if not _first_use(line, self._loop.time()):
                raise ValueError("leg header seen before: replayed")
            self._start(fields)
        except (SealError, ValueError, KeyError, TypeError) as exc:
            self._refuse_leg(getattr(exc, "desc", None) or f"bad leg header: {exc}")
            return
        rest = lines.take_rest()
        if rest and self.outcome is None:
            self.data_received(rest)

    def _refuse_leg(self, desc: str) -> None:
        log.warning("leg refused", extra={"fields": {"peer": self.peer, "desc": desc}})
        self.close(Outcome.HANDSHAKE_FAILED, desc, abort=True)

    def _start(self, fields: dict[str, Any]) -> None:
        if fields.get("v") != 1:
            raise ValueError(f"unknown leg version {fields.get('v')!r}")
        if abs(time.time() - float(fields["ts"])) > CLOCK_SKEW:
            raise ValueError("leg header too old or from the future: replayed, or the nodes' clocks differ")
        self._node = str(fields["node"])
        self.peer = f"{self._node}@{self.peer}"
        chid = str(fields["from"])
        recvers = fields["recvers"]
        sender_recvers = None if recvers is None else tuple(str(c) for c in recvers)
        self.remote = self._cluster.leg_opened(
            self._node, chid, str(fields["sid"]), sender_recvers, bool(fields.get("framed"))
        )
        self.chid = chid
        if fields["mode"] == "raw":
            to_chid, to_session = (str(x) for x in fields["to"])
            self.recvers = (to_chid,)
            target = self._cluster.target_session(to_chid, to_session)
            handshaking.establish(self, hs4=b"")
            if target is None:
                self._goodbye("its receiver is not online here")
                return
            self.target = cast(Session, target)
            self._router.when_offline(to_chid, self._target_left)
            self._splice_after = self._config.splice_after
        else:
            self.recvers = sender_recvers
            self.fed = set()
            if fields.get("named"):  # its node names receivers by session (older nodes do not)
                self.sessions = {}
            self._frames = FrameParser(MAX_LEG_FRAME)
            handshaking.establish(self, hs4=b"")

    @property
    def node(self) -> str:
        return self._node

    def node_gone(self) -> None:
        """The sending node's lease lapsed: it hangs or died, and this leg will bring nothing more."""
        if self._transport is not None:
            self._transport.abort()

    def _target_left(self) -> None:
        self._loop.call_soon(self._goodbye, "its receiver went offline")

    def leave(self) -> None:
        """This node is shutting down: end the leg on purpose, so the sending node does not count it lost."""
        if self.established and self.outcome is None:
            self._goodbye("this node is shutting down")
        else:
            self.close(Outcome.SHUTDOWN)

    def _goodbye(self, desc: str) -> None:
        """End the leg on purpose: the sending node must not take it for a lost one."""
        if self.outcome is not None or self._transport is None:
            return
        self._said_goodbye = True
        self._transport.write(GOODBYE)
        self.close(Outcome.CLIENT_CLOSED, desc)

    def _send_control(self, message: dict[str, object]) -> None:
        pass  # replies to the leg's commands: the sending node does not read them

    def _command(self, payload: bytes | memoryview) -> None:
        sessions = self.sessions
        if sessions is not None and bytes(payload[:12]) == b'{"cmd":"to",':  # the node's compact JSON
            try:
                msg = json.loads(bytes(payload))
                chid, sid = msg["chid"], msg["sid"]
                if not isinstance(chid, str) or not (sid is None or isinstance(sid, str)):
                    raise TypeError("chid and sid must be strings")
            except (ValueError, KeyError, TypeError) as exc:
                self._frame_error(FrameError(f"bad {NAME} command on a leg: {exc}"))
                return
            if sid is None:
                sessions.pop(chid, None)
            elif chid in sessions or len(sessions) < MAX_RECVERS:  # no more than its sender may name
                sessions[chid] = sid
            else:
                self._frame_error(FrameError(f"more than {MAX_RECVERS} chids named on a leg"))
            return
        super()._command(payload)

    def eof_received(self) -> bool:
        if self.established and self._frames is not None and self._frames.buffered:
            self.discarded += self._frames.discard()
        if self.established:
            self._input_ended()
        elif self.outcome is None:
            self.outcome = Outcome.HANDSHAKE_ABANDONED
        return False

    def _input_ended(self) -> None:
        """The sender finished sending: its receivers here hear of it, and the leg is done."""
        if self._finished:
            return
        self._finished = self._in_done = True
        if self.remote is not None:
            self._cluster.leg_finished(self.remote)
        if self.outcome is None:
            self.close(Outcome.CLIENT_CLOSED)

    def deadline_passed(self) -> None:
        if self._lines is not None and self.outcome is None:
            self._refuse_leg("no leg header within the handshake timeout")
            return
        super().deadline_passed()

    def draining(self, grace: float) -> None:  # pragma: no cover - legs are not drained, they end with their senders
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None:
            self._router.cancel_when_offline(self.target.chid, self._target_left)
        if self.remote is not None and not self._finished and not self._said_goodbye:
            # The leg broke, or its node died: the stream it carried has a gap.
            desc = f"the leg from node {self._node} broke" + (f": {exc}" if exc else "")
            log.warning("leg lost", extra={"fields": {"node": self._node, "from": self.chid}})
            self._cluster.leg_failures["lost_in"] = self._cluster.leg_failures.get("lost_in", 0) + 1
            # Now, before the sender's entry goes: its release would end their
            # streams with a FIN, as if they were complete.
            for sink in self._fed_sinks():
                sink.link_lost(desc)
        if self.outcome is None:
            self.outcome = Outcome.RESET if exc is not None else Outcome.CLIENT_CLOSED
        self._teardown()
        if self.remote is not None:
            remote, self.remote = self.remote, None
            self._cluster.leg_closed(remote)
        self._relay.legs.discard(self)
        self._transport = None

    def _fed_sinks(self) -> list[Sink]:
        if self.target is not None:
            return [self.target] if self.bytes_in else []
        return list(self.fed or ())


def opener(relay: Relay) -> Any:
    """The cluster router's ``open_leg``: a :class:`LegOut`, connecting in the background."""

    def open_leg(sender: Sink, session: str, node: str, address: str, target: tuple[str, str] | None) -> Leg:
        cluster = cast(ClusterRouter, relay.router)
        fields: dict[str, Any] = {
            "v": 1,
            "node": cluster.node,
            "from": sender.chid,
            "sid": session,
            "recvers": None if sender.recvers is None else list(sender.recvers),
            "framed": sender.framed,
            "mode": "frames" if target is None else "raw",
            "ts": round(time.time(), 3),
        }
        if target is not None:
            fields["to"] = list(target)
        else:
            fields["named"] = True  # its NAME commands say which session each chid's bytes are for
        assert relay.leg_sealer is not None
        leg = LegOut(relay, cluster, sender, node, seal_header(relay.leg_sealer, fields), target)
        host, _, port = address.rpartition(":")

        async def connect() -> None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await relay.loop.create_connection(lambda: leg, host.strip("[]"), int(port))
            except TimeoutError:
                raise TimeoutError(f"no answer from {address} in {CONNECT_TIMEOUT:g} s") from None

        task = asyncio.ensure_future(connect())

        def connected(task: asyncio.Future[Any]) -> None:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                leg.connect_failed(exc)

        task.add_done_callback(connected)
        return cast(Leg, leg)

    return open_leg
