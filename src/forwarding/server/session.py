"""One client connection: an asyncio.Protocol that moves bytes between the socket,
the handshake core and the router.

It decides nothing about the protocol: the handshake rules live in
:mod:`forwarding.protocol.handshake`, the steps that run them in
:mod:`.handshaking`, framed mode in :mod:`.framed`. Once established, ``data_received`` is the
forwarding hot path: count, stamp, route. Flow control is per receiver: when a
receiver's transport passes its high-water mark, every sender that delivers to
it stops being read until it drains (docs/protocol.md, "Flow control").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from typing import TYPE_CHECKING, Protocol, cast

from ..logs import blur_address
from ..protocol.chid import generate_chid
from ..protocol.frames import (
    Frame,
    FrameError,
    FrameParser,
    close_event,
    control_frame,
    data_header,
    eof_event,
    presence_frame,
)
from ..protocol.handshake import Hs3Received, ServerHandshake
from ..protocol.messages import encode, hs4_fail, quote
from ..routing.base import Router, Sink
from . import framed, handshaking, metering, visits
from .deadlines import Expiring
from .outcome import Outcome
from .quotas import Meter
from .splice import Pump
from .visits import Visit

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.session")

_NEVER = sys.maxsize  # a read size no read reaches: this session is not spliced
_LINGER_RESET = struct.pack("ii", 1, 0)


class Layer(Protocol):
    """A transport layer under the session that must know when the handshake is over (WebSocket)."""

    def handshake_over(self) -> None: ...


class Session(asyncio.Protocol, Expiring):
    """A client connection from accept to close."""

    LEG = False
    """A node-to-node leg (server/legs.py), not a client: no quotas, no open line of its own."""

    # Slots, and sets and lists made only when needed: an idle session is what a
    # relay holds by the hundred thousand (docs/performance.md, idle sessions).
    __slots__ = (
        "_relay",
        "_router",
        "_loop",
        "_config",
        "chid",
        "peer",
        "recvers",
        "idle_timeout",
        "bytes_in",
        "bytes_out",
        "dropped",
        "discarded",
        "outcome",
        "desc",
        "opened_at",
        "last_active",
        "established",
        "_raw_live",
        "_in_done",
        "_out_done",
        "_closing",
        "_aborted",
        "_transport",
        "_ip",
        "_admitted",
        "_tls_pending",
        "_hs",
        "_registered",
        "_waiting",
        "_awaiting_chid",
        "_pending",
        "_write_paused",
        "_blockers",
        "_waiters",
        "_timer",
        "_slow_timer",
        "pump",
        "_splice_after",
        "_inbound",
        "_frames",
        "_subscribed",
        "_backlog",
        "_partial_since",
        "_service",
        "_visit",
        "_peer",
        "_layer",
        "_spliceable",
        "_meter",
        "_claiming",
        "_eof_held",
    )

    def __init__(self, relay: Relay, layer: Layer | None = None) -> None:
        """``layer``: the WebSocket layer this session runs on (server/ws.py), if any."""
        self._relay = relay
        self._router: Router = relay.router
        self._loop = relay.loop
        config = relay.config
        self._config = config
        self.chid = ""
        self.peer = "?"
        self.recvers: tuple[str, ...] | None = None
        self.idle_timeout = config.limits.default_idle_timeout
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        """Bytes the relay could not deliver: to an offline or ended receiver, or cut from this one's queue."""
        self.discarded = 0
        """Bytes the client sent that were thrown away unread: after the close began, a frame cut by FIN,
        or data that came with an hs3 that never got its hs4."""
        self.outcome: Outcome | None = None
        self.desc: str | None = None
        self.opened_at = self._loop.time()
        self.last_active = self.opened_at
        self.established = False
        # The raw hot path's one test: established, raw, output not ended.
        self._raw_live = False
        # End of stream (docs/protocol.md, 5.1): the client has sent FIN (or its
        # pump saw it); the relay has ended (or will end) the client's input.
        self._in_done = False
        self._out_done = False
        self._closing = False  # a graceful close is under way (see _close)
        self._aborted = False  # reset by us: what was queued is counted as dropped, once
        self._transport: asyncio.Transport | None = None
        self._ip = "?"
        self._admitted = False
        # A layer (WebSocket) makes the session after its own TLS and upgrade.
        self._tls_pending = relay.ssl_context is not None and layer is None
        self._layer = layer
        self._spliceable = relay.splice and layer is None  # a WebSocket's socket carries frames
        self._hs: ServerHandshake | None = None
        self._registered = False
        self._waiting = False
        self._awaiting_chid = False  # hs1 named a chid whose owner has finished sending
        # Until hs4 is out, deliveries queue here and count as "over the mark",
        # so their senders pause after one read: bounded by fan-in x one read.
        self._pending: list[bytes | memoryview] | None = None
        self._write_paused = True
        self._blockers: set[Sink] | None = None  # receivers over their mark that this session sent to
        self._waiters: set[Sink] | None = None  # senders paused because of this session
        self._timer: asyncio.TimerHandle | None = None  # the TLS handshake's deadline
        Expiring.__init__(self)  # relay.deadlines: the handshake's deadline, then the idle one
        self._slow_timer: asyncio.TimerHandle | None = None
        self.pump: Pump | None = None  # splices this session's bytes to its one receiver
        self._splice_after = _NEVER  # a read this large hands us to a pump (one receiver only)
        self._inbound: set[Pump] | None = None  # pumps that write into this session
        self._frames: FrameParser | None = None  # framed mode (hs3 "mode": "framed")
        self._subscribed = False  # framed: presence events on
        self._backlog: list[Frame] | None = None  # framed: frames of one read not yet run (12.3)
        self._partial_since: float | None = None  # framed: when the incomplete frame held began
        self._service = False  # hs3 "service": visits, never data (server/visits.py)
        self._visit: Visit | None = None  # a visitor whose handshake waits for the service's answer
        self._peer: str | None = None  # one end of a visit: the other end, the only sender it takes
        self._meter: Meter | None = None  # rate caps and quotas on what this client sends (server/quotas.py)
        self._claiming: Hs3Received | None = None  # hs3 waits for the router's claim (a cluster's registry)
        self._eof_held = False  # the client's FIN came while hs3's claim was under way

    @property
    def framed(self) -> bool:
        return self._frames is not None

    @property
    def transport_name(self) -> str:
        """``tcp``, ``tls`` or ``websocket``: for the status page and admin."""
        if self._layer is not None:
            return "websocket"
        return "tls" if self._relay.ssl_context is not None else "tcp"

    @property
    def has_sent(self) -> bool:
        return self.bytes_in > 0

    # -- asyncio callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(self._config.write_buffer_high, self._config.write_buffer_low)
        peer = transport.get_extra_info("peername")
        if peer:
            host, port = peer[0], peer[1]
            if self._config.blur_addresses:  # admission below still counts the exact address
                self.peer = blur_address(host)
            else:
                self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ip = peer[0] if peer else "?"
        if self._hs is not None:  # handed over at hs3 (server/handoff.py): its worker admitted it
            refusal = self._relay.admission.adopt(self._ip)
        else:
            refusal = self._relay.admission.admit(self._ip, self.opened_at)
        self._admitted = refusal is None
        self._relay.session_opened(self)
        if refusal is not None and self._hs is not None:
            handshaking.refuse(self, Outcome.REFUSED, refusal, "refused")  # sealed, if its lines are
            if self._config.blur_addresses:
                self.desc = refusal.replace(self._ip, self.peer)
            return
        if refusal is not None:
            self.outcome = Outcome.REFUSED
            # The client is told its own address; the log is blurred like the rest.
            self.desc = refusal.replace(self._ip, self.peer) if self._config.blur_addresses else refusal
            if not self._relay.broadcast_mode:
                transport.write(encode(hs4_fail(refusal, "refused")))
            self._close()
            return
        if self._tls_pending:
            # TlsProtocol calls tls_established() when the TLS handshake is done.
            self._timer = self._loop.call_at(self.opened_at + self._config.limits.handshake_timeout, self._tls_timeout)
            return
        self._begin()

    def adopt(self, hs: ServerHandshake, age: float) -> None:
        """Before the connection is made: a handshake another worker suspended at hs3, ``age`` seconds old."""
        self._hs = hs
        assert hs.chid is not None
        self.chid = hs.chid
        self.opened_at -= age
        self.last_active = self._loop.time()

    def tls_established(self) -> None:
        self._tls_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.outcome is None:
            self._begin()

    def _tls_timeout(self) -> None:
        self._timer = None
        if self._tls_pending and self.outcome is None:
            limit = self._config.limits.handshake_timeout
            self.close(Outcome.TLS_FAILED, f"TLS handshake not completed within {limit:g} s", abort=True)

    def _begin(self) -> None:
        """Start the session proper: broadcast right away, or the handshake."""
        if self._relay.broadcast_mode:
            spent = self._relay.quotas.refusal("", self._ip)  # no handshake, so no FAIL: closed at once
            if spent is not None:
                self.close(Outcome.REFUSED, spent)
                return
            self.chid = generate_chid()
            self._router.claim(self, self._broadcast_claimed)
            if not self._registered and self.outcome is None:  # a cluster's registry answers later
                assert self._transport is not None
                self._transport.pause_reading()  # no handshake to hold what arrives meanwhile
        elif self._hs is not None:  # resumed at hs3: its first event is that hs3
            self._arm_handshake_timer()
            handshaking.drive(self)
        else:
            self._hs = ServerHandshake(self._config.limits, self.opened_at, self._relay.sealer)
            self._arm_handshake_timer()

    def _broadcast_claimed(self, refusal: str | None) -> None:
        if self.outcome is not None:  # closed while a cluster's registry answered
            if refusal is None:
                self._router.release(self)
        elif refusal == "chid_in_use":  # pragma: no cover - 128 random bits
            self.chid = generate_chid()
            self._router.claim(self, self._broadcast_claimed)
        elif refusal is not None:
            self.close(Outcome.UNAVAILABLE, "the cluster registry is unavailable")
        else:
            self._registered = True
            handshaking.establish(self, hs4=b"")
            assert self._transport is not None
            if not self._blockers:
                self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.established:
            if self._meter is None:
                self._forward(data)
            else:
                metering.received(self, data)  # forwards what the quotas allow, then paces
            return
        if self._hs is None or self.outcome is not None:
            self.discarded += len(data)  # after the close began: read only to be discarded
            return
        self._hs.receive_data(data)
        handshaking.drive(self)
        held = self._waiting or self._visit or self._claiming
        if held and self._hs is not None and self._hs.buffered > self._config.limits.max_line:
            assert self._transport is not None
            self._transport.pause_reading()  # resumed at hs4 (handshaking.finish)

    def _forward(self, data: bytes) -> None:
        if self._frames is not None:
            framed.frames_received(self, data)
            return
        # The hot path: no parsing, no copying, no logging.
        n = len(data)
        self.bytes_in += n
        self.last_active = self._loop.time()
        dropped = self._router.route(self, self.recvers, data)
        if dropped:
            self.dropped += dropped
        if n >= self._splice_after:  # a streaming sender: try the zero-copy path
            self._try_splice()

    @property
    def _rate_held(self) -> bool:
        return self._meter is not None and self._meter.holding

    def eof_received(self) -> bool:
        """The client sent FIN: it has finished sending, not receiving (docs/protocol.md, 5.1)."""
        if self.outcome is None:
            if self._frames is not None and self.established:
                # Framed: FIN is leaving, the eof command is the half-close (12.2), so
                # a framed client that dies is offline at once.
                if self._frames.buffered:
                    self.discarded += self._frames.discard()  # a frame cut short: never forwarded
                self.close(Outcome.CLIENT_CLOSED, "the client sent FIN")
                return False
            if self.established:
                self._input_ended()
                return self.outcome is None  # True keeps the transport open for writing
            if self._claiming is not None:
                # hs3 is in, its claim at a cluster's registry: one relay would have
                # established the session by now and taken this FIN as its end of
                # stream, after its data. So will we, once the claim is answered.
                self._eof_held = True
                return True
            self.outcome = Outcome.HANDSHAKE_ABANDONED
        return False  # close our side too; queued bytes are flushed first

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._slow_timer is None and self.outcome is None:
            self._slow_timer = self._loop.call_later(self._config.slow_receiver_timeout, self.too_slow)

    def resume_writing(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if self.established:
            self._write_paused = False
            self._release_waiters()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outcome is None and self._tls_pending:
            self.outcome = Outcome.TLS_FAILED
            self.desc = str(exc) if exc else "closed during the TLS handshake"
        if self.outcome is None:
            if exc is not None:
                self.outcome = Outcome.RESET
                self.desc = str(exc) or type(exc).__name__
            else:
                self.outcome = Outcome.CLIENT_CLOSED if self.established else Outcome.HANDSHAKE_ABANDONED
        self._teardown()
        if self._admitted:
            self._relay.admission.release(self._ip)
        self._relay.session_closed(self)
        # A layered transport (TLS, WebSocket) points back at us through its
        # protocol: without this the session, its layer and their buffers would
        # wait for the cyclic collector (200 TLS pairs left 100 MiB behind a run).
        self._transport = None

    # -- Sink, for the router ------------------------------------------------

    def deliver(self, data: bytes | memoryview, sender: str) -> bool:
        if self._raw_live:
            # The raw hot path: the sender's bytes object as it is, one write.
            self.bytes_out += len(data)
            self.last_active = self._loop.time()
            self._transport.write(data)  # type: ignore[union-attr]  # established => connected
            return self._write_paused
        if self._out_done or self._service or self._peer is not None and sender != self._peer:
            # A raw client whose input has ended (5.1), a service, or one end of a
            # visit, which takes only the other end's bytes (13): nobody else's.
            self.dropped += len(data)
            return False
        self.bytes_out += len(data)
        self.last_active = self._loop.time()
        chunks: tuple[bytes | memoryview, ...] = (data,)
        if self._frames is not None:
            # A data frame tagged with the sender: the header is the only new bytes.
            chunks = (data_header(len(data), sender.encode()), data)
        self._write(chunks)
        return self._write_paused

    def _write(self, chunks: tuple[bytes | memoryview, ...]) -> None:
        """Write now, or queue until hs4 is out (section 4.3)."""
        if self.established:
            self._transport.writelines(chunks)  # type: ignore[union-attr]
        elif self._pending is None:
            self._pending = list(chunks)
        else:
            self._pending.extend(chunks)

    def sender_finished(self, chid: str, last: bool) -> None:
        if self.outcome is not None or self._out_done or self._service:
            return
        if self._frames is not None:
            self._write((control_frame(eof_event(chid)),))
        elif last:
            if self._in_done:
                self._finish_later()
            else:
                self._end_output()

    def _input_ended(self) -> None:
        """The client finished sending (raw FIN, framed eof): tell its receivers.

        A raw session is closed when nothing can reach it any more; a framed one
        stays until its client closes it.
        """
        if self._in_done or self.outcome is not None:
            return
        self._in_done = True
        self._router.finish(self)
        if self._frames is not None:
            return
        if self.outcome is None and (self._out_done or not self._router.senders(self.chid)):
            self._finish()
        elif self.idle_timeout > self._config.half_close_timeout:
            self.idle_timeout = self._config.half_close_timeout
            self._arm_idle_timer()

    def _end_output(self) -> None:
        """End the client's input (FIN) once what is queued for it is written; it may go on sending."""
        self._out_done = True
        self._raw_live = False
        if self.established:
            assert self._transport is not None
            self._shut_down_output(self._transport)
        # else _establish ends it right after hs4 and the queued bytes

    def _finish_later(self) -> None:
        # Both directions are done. Deferred: we are inside the router's finish(),
        # and closing releases us, which must not happen synchronously there.
        self._out_done = True
        self._raw_live = False
        self._loop.call_soon(self._finish)

    def _finish(self) -> None:
        if self.outcome is None:
            self.close(Outcome.CLIENT_CLOSED, "both directions finished")

    def draining(self, grace: float) -> None:
        """The relay has begun to drain: a framed client hears it may go on for ``grace`` seconds."""
        if self._frames is not None and self.established and self.outcome is None:
            self._send_control({"event": "draining", "grace": grace})

    def presence(self, chid: str, online: bool) -> None:
        if self.outcome is None and self.established:
            self._write((presence_frame(chid, online),))

    def throttle(self, by: Sink) -> None:
        if self._blockers is None:
            self._blockers = set()
        elif by in self._blockers:
            return
        self._blockers.add(by)
        by.add_waiter(self)
        if len(self._blockers) == 1 and self._transport is not None:
            self._transport.pause_reading()

    def add_waiter(self, sender: Sink) -> None:
        if self._waiters is None:
            self._waiters = set()
        self._waiters.add(sender)

    def peer_left(self, chid: str) -> None:
        self.close(Outcome.PEER_LEFT, f"recver {quote(chid)} went offline")

    def link_lost(self, desc: str, dropped: int = 0) -> None:
        # A raw stream with a gap must not end in a FIN, which says "all sent":
        # the client gets a reset. A framed one is told why, then closed.
        self.dropped += dropped
        raw = self._frames is None
        if raw and self.outcome is None and self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:  # a close with SO_LINGER 0 is a reset; a plain abort would send FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close(Outcome.LINK_LOST, desc, abort=raw)

    def discard_waiter(self, sender: Sink) -> None:
        if self._waiters is not None:
            self._waiters.discard(sender)

    def unthrottle(self, by: Sink) -> None:
        if self._blockers is not None:
            self._blockers.discard(by)
        if self._backlog is not None and not self._blockers and self.outcome is None:
            backlog, self._backlog = self._backlog, None
            framed.run_frames(self, backlog)  # may stop again, over the mark
        if not self._blockers and self.outcome is None and not self._waiting and self.pump is None:
            assert self._transport is not None
            if not self._rate_held:
                self._transport.resume_reading()

    # -- handshake (the steps are in server/handshaking.py) -------------------

    def _claimed(self, refusal: str | None) -> None:
        handshaking.claimed(self, refusal)  # a method: the router calls it back
        if self._eof_held:  # the FIN that came meanwhile, now that the session is what it became
            self._eof_held = False
            if not self.eof_received() and self._transport is not None:
                self._transport.close()  # as asyncio does when eof_received says so

    def _chid_freed(self) -> None:
        # Deferred: we are inside the old owner's release().
        self._loop.call_soon(handshaking.take_freed_chid, self)

    def _on_peer_online(self, chid: str) -> None:
        assert self.recvers is not None
        if chid in self.recvers and len(self._router.online(self.recvers)) == len(self.recvers):
            # Defer: we are inside another session's claim().
            self._loop.call_soon(handshaking.finish_waiting, self)

    # -- framed mode (docs/protocol.md, section 12; the rules are in server/framed.py) --

    def _send_control(self, message: dict[str, object]) -> None:
        self._write((control_frame(message),))

    def _command(self, payload: bytes | memoryview) -> None:
        framed.command(self, payload)  # a method, so that a leg can add its own

    def _frame_error(self, exc: FrameError) -> None:
        self.close(Outcome.FRAME_ERROR, exc.desc, reason_code=exc.code)

    # -- zero-copy path (server/splice.py) -------------------------------------

    def _try_splice(self) -> None:
        """Hand forwarding to a splice pump if this session sends to one plain local receiver.

        Called after a read of at least ``splice_after`` bytes, so only streams
        are spliced. Only when nothing of ours can still be queued for that
        receiver: its transport buffer is empty and we are not throttled;
        otherwise a later large read tries again.
        """
        if self.pump is not None or self.outcome is not None or self._blockers or not self.established:
            return
        if self._frames is not None:  # frames are parsed, not spliced
            return
        assert self.recvers is not None and self._transport is not None
        receiver = self._router.splice_target(self, self.recvers[0])
        if not isinstance(receiver, Session) or not receiver.established or receiver.outcome is not None:
            return
        if receiver._frames is not None or not receiver._spliceable:  # frames, or a WebSocket's socket
            return
        dst = receiver._transport
        if dst is None or dst.get_write_buffer_size():
            return
        try:
            self.pump = Pump(
                self._loop,
                self,
                receiver,
                self._transport.get_extra_info("socket"),
                dst.get_extra_info("socket"),
                min(self._config.write_buffer_high, 1 << 20),
                self._config.slow_receiver_timeout,
            )
        except OSError as exc:
            log.warning("splice unavailable, forwarding the ordinary way", extra={"fields": {"error": str(exc)}})
            return
        self._transport.pause_reading()
        if receiver._inbound is None:
            receiver._inbound = set()
        receiver._inbound.add(self.pump)
        if log.isEnabledFor(logging.DEBUG):
            pump = self.pump
            sndbuf = "autotuned" if pump.sndbuf is None else pump.sndbuf
            fields = {"chid": self.chid, "recver": receiver.chid, "pipe": pump.pipe_size, "sndbuf": sndbuf}
            log.debug("splicing", extra={"fields": fields})

    def pump_stopped(self, pump: Pump) -> None:
        """Our pump closed; if we are still open (its receiver left), read the ordinary way."""
        if self.pump is pump:
            self.pump = None
            if pump.source_ended:  # our client's FIN, and the pipe is drained: as eof_received
                self._input_ended()
            elif self.outcome is None and not self._blockers and self._transport is not None and not self._rate_held:
                self._transport.resume_reading()

    def inbound_pump_stopped(self, pump: Pump) -> None:
        if self._inbound is not None:
            self._inbound.discard(pump)

    # -- timers --------------------------------------------------------------

    # Both the handshake's deadline and the idle timeout sit in the relay's shared
    # 0.1-s buckets (server/deadlines.py): no timer handle per connection.

    def _arm_handshake_timer(self) -> None:
        assert self._hs is not None and self._hs.deadline is not None
        self._relay.deadlines.add(self, self._hs.deadline)

    def _handshake_expired(self) -> None:
        hs = self._hs
        if hs is None:  # pragma: no cover - established sessions take the idle branch
            return
        now = self._loop.time()
        if hs.deadline is not None and now < hs.deadline:  # pragma: no cover - early by clock resolution
            self._arm_handshake_timer()
        elif self._awaiting_chid:
            handshaking.refuse(self, Outcome.CHID_IN_USE, handshaking.in_use(self.chid), "chid_in_use")
        elif self._visit is not None:
            assert self.recvers is not None
            limit = self._config.limits.handshake_timeout
            desc = f"service {quote(self.recvers[0])} did not answer within {limit:g} s"
            handshaking.refuse(self, Outcome.HANDSHAKE_TIMEOUT, desc, "handshake_timeout")
        elif self._waiting:
            assert self.recvers is not None
            missing = [c for c in self.recvers if not self._router.is_online(c)]
            limit = self._config.limits.handshake_timeout
            desc = f"recvers not online after {limit:g} s: {', '.join(missing)}"
            handshaking.refuse(self, Outcome.WAIT_TIMEOUT, desc, "wait_timeout")
        else:
            event = hs.handle_timeout(now)
            assert event is not None
            handshaking.refuse(self, Outcome.HANDSHAKE_TIMEOUT, event.desc, event.code)

    def _arm_idle_timer(self) -> None:
        # Replaces the handshake's deadline if that is still pending.
        due = self.last_active + self.idle_timeout
        if self._partial_since is not None:
            due = min(due, self._partial_since + self._config.frame_timeout)
        self._relay.deadlines.add(self, due)

    def deadline_passed(self) -> None:
        if self._closing:
            self._close_expired()
            return
        if self.outcome is not None:
            return
        if not self.established:
            self._handshake_expired()
            return
        now = self._loop.time()
        partial = self._partial_since
        if partial is not None and now - partial >= self._config.frame_timeout:
            limit = self._config.frame_timeout
            self._frame_error(FrameError(f"a frame left incomplete for {limit:g} s", "frame_timeout"))
            return
        # Activity only stamps last_active; the deadline is re-armed for the time left.
        if now - self.last_active >= self.idle_timeout:
            self.close(Outcome.IDLE_TIMEOUT, f"no data in either direction for {self.idle_timeout:g} s")
        else:
            self._arm_idle_timer()

    def too_slow(self) -> None:
        self._slow_timer = None
        if self.outcome is None:
            self.outcome = Outcome.SLOW_RECEIVER
            self.desc = f"did not read for {self._config.slow_receiver_timeout:g} s while data was queued"
            self._close(abort=True)

    # -- closing ---------------------------------------------------------------

    def close(self, outcome: Outcome, desc: str | None = None, abort: bool = False, reason_code: str = "") -> None:
        """Close the session for a server-side reason (shutdown, admin, a framing error).

        A framed session gets a close event first, saying why (unless aborted);
        a handshaking one given a ``reason_code`` gets FAIL with that code.
        """
        if self.outcome is None and self._hs is not None and reason_code and not abort:
            handshaking.refuse(self, outcome, desc or outcome.value, reason_code)
            return
        if self.outcome is None:
            self.outcome = outcome
            self.desc = desc
            if self._frames is not None and self.established and not abort and self._transport is not None:
                code = reason_code or outcome.value
                self._send_control(close_event(code, desc or outcome.value))
        self._close(abort)

    def _close(self, abort: bool = False) -> None:
        """Leave the router, then close: at once (abort: RST), or gracefully within ``close_timeout``.

        A graceful close writes out what is queued, shuts down our sending side
        (FIN), and reads and discards what the client still sends until its own
        FIN: closing a socket with unread input would make the kernel send RST
        and throw away what the client had not read yet (docs/protocol.md, 5).
        """
        # Leave the router now, not in connection_lost: a closing session must
        # not be delivered to, or its chid stay taken while its buffer drains.
        self._leave_router()
        transport = self._transport
        if transport is None:
            return
        if abort:
            self._abort(transport)
            return
        if self._closing:
            return
        self._closing = True
        self.established = self._raw_live = False  # from now on data_received discards
        if self._in_done:  # the client's FIN is in: nothing unread can follow
            transport.close()
        elif self._shut_down_output(transport):
            transport.resume_reading()  # to see the client's FIN (eof_received closes)
        # One deadline for the whole close: flushing, and the client's FIN.
        self._relay.deadlines.add(self, self._loop.time() + self._config.close_timeout)

    def _shut_down_output(self, transport: asyncio.Transport) -> bool:
        """FIN after what is queued; False if the connection had already failed (then it is aborted)."""
        try:
            transport.write_eof()
            return True
        except OSError as exc:  # ENOTCONN: reset by the peer, not yet reported by a read
            if self.outcome is None:
                self.outcome, self.desc = Outcome.RESET, str(exc) or type(exc).__name__
            self._abort(transport)
            return False

    def _close_expired(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() and not transport.get_write_buffer_size():
            return
        # The client neither took what was queued nor answered our FIN in time.
        self._abort(transport)

    def _abort(self, transport: asyncio.Transport) -> None:
        """RST; what was still queued for the client is counted as dropped, once.

        Once: uvloop still reports an aborted transport's buffer, and a layer may
        ask again (a WebSocket read holds many frames that each break a rule)."""
        if not self._aborted:
            self._aborted = True
            self.dropped += transport.get_write_buffer_size()
        transport.abort()

    def _leave_router(self) -> None:
        # Pumps first: a final flush into a receiver that is leaving, and a sender
        # that goes back to its transport before the router forgets us.
        if self.pump is not None:
            self.pump.stop()
        if self._inbound:
            for pump in list(self._inbound):
                pump.stop()
        if self._visit is not None:
            self._relay.visits.drop(self._visit)
            self._visit = None
        if self._registered:
            self._registered = False
            if self._service:
                visits.service_left(self)
            self._router.release(self)
        if self._waiting:
            self._waiting = False
            self._router.unwatch(self.recvers or (), self._on_peer_online)
        if self._awaiting_chid:
            self._awaiting_chid = False
            self._router.cancel_when_offline(self.chid, self._chid_freed)
        if self._meter is not None:
            self._meter.close()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        for sender in waiters or ():
            sender.unthrottle(self)

    def _teardown(self) -> None:
        handshaking.discard_held(self)  # a handshake that ended short of hs4 (its client gave up, or reset)
        self._leave_router()
        self.established = self._raw_live = False
        for handle in (self._timer, self._slow_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._slow_timer = None
        self._relay.deadlines.discard(self)
        self._pending = None
        self._release_waiters()
        blockers, self._blockers = self._blockers, None
        for receiver in blockers or ():
            receiver.discard_waiter(self)
