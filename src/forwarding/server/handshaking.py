"""The client handshake on the server (docs/protocol.md, sections 2-4): the core's events, run.

Functions of a :class:`~forwarding.server.session.Session`, kept apart from the
connection's life cycle and its hot path, as server/framed.py keeps framed mode;
the rules themselves are the I/O-free :mod:`forwarding.protocol.handshake`. The
first argument is called ``self`` on purpose: these are the session's methods,
filed here. The three the router calls back stay methods of the session:
``_chid_freed`` and ``_on_peer_online`` are found again by equality when they
are cancelled, and ``_claimed`` goes with them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..protocol.chid import generate_chid
from ..protocol.frames import FrameParser
from ..protocol.handshake import Failed, Hs1Received, Hs3Received, State
from ..protocol.messages import quote
from . import visits
from .outcome import Outcome

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("forwarding.session")  # its lines are the session's


def drive(self: Session) -> None:
    hs = self._hs
    assert hs is not None
    while self.outcome is None:
        event = hs.next_event()
        if isinstance(event, Hs1Received):
            on_hs1(self, event)
        elif isinstance(event, Hs3Received):
            on_hs3(self, event)
        elif isinstance(event, Failed):
            refuse(self, Outcome.HANDSHAKE_FAILED, event.desc, event.code)
        else:
            break
    flush(self)


def on_hs1(self: Session, event: Hs1Received) -> None:
    assert self._hs is not None
    if event.chid is None:
        chid = generate_chid()
    elif self._router.is_online(event.chid):
        self.chid = event.chid  # for the log line; never registered
        if self._router.has_finished(event.chid):
            # Its owner has sent FIN and is on its way out (5.1): a client that
            # closes and comes straight back must not lose the race to itself.
            # Wait for it to go offline, within the handshake timeout.
            self._awaiting_chid = True
            assert self._transport is not None
            self._transport.pause_reading()
            self._router.when_offline(event.chid, self._chid_freed)
            return
        refuse(self, Outcome.CHID_IN_USE, in_use(event.chid), "chid_in_use")
        return
    else:
        chid = event.chid
    self.chid = chid
    self._hs.accept_chid(chid)


def take_freed_chid(self: Session) -> None:
    if not self._awaiting_chid or self.outcome is not None:
        return
    self._awaiting_chid = False
    assert self._hs is not None and self._transport is not None
    if self._router.is_online(self.chid):  # someone else was quicker
        refuse(self, Outcome.CHID_IN_USE, in_use(self.chid), "chid_in_use")
        return
    self._hs.accept_chid(self.chid)
    if not self._blockers:
        self._transport.resume_reading()
    drive(self)  # a pipelined hs3 may be buffered


def on_hs3(self: Session, event: Hs3Received) -> None:
    self.recvers = event.recvers
    self.idle_timeout = event.timeout
    if event.framed:
        self._frames = FrameParser(self._config.limits.max_frame)
    spent = self._relay.quotas.refusal(self.chid, self._ip)
    if spent is not None:
        refuse(self, Outcome.REFUSED, spent, "quota_exceeded")
        return
    if event.accept is not None:
        handoff = self._relay.handoff
        if handoff is not None and self._relay.visits.get(event.accept) is None:
            # The visit waits in the worker whose tickets map to this one: answer it there.
            if hand_off(self, event, handoff.ticket_node(event.accept)):
                return
        visits.accept(self, event.accept)
        return
    service = self._relay.visits.names_service(self.recvers)
    if service is not None and not can_visit(self, service):
        return
    self._service = event.service
    if self._relay.handoff is not None and hand_off(self, event, receivers_worker(self, event)):
        return
    self._claiming = event
    self._router.claim(self, self._claimed)


def receivers_worker(self: Session, event: Hs3Received) -> str | None:
    """The sibling worker that holds this sender's one receiver, if it has exactly one and it is there."""
    cluster = self._relay.cluster
    if cluster is None or event.service or self.recvers is None or len(self.recvers) != 1:
        return None
    return cluster.remote_node(self.recvers[0])


def hand_off(self: Session, event: Hs3Received, node: str | None) -> bool:
    """Send this connection to sibling worker ``node`` (server/handoff.py); ``True`` if sent.

    Before the claim: the session is born there, and nothing of it stays here.
    """
    hs, transport, handoff = self._hs, self._transport, self._relay.handoff
    assert hs is not None and transport is not None and handoff is not None
    if node is None or node == handoff.node:
        return False
    flush(self)  # hs2, if hs3 came in the same read: the client must have it from us
    if (
        hs.resumed  # moved once already: never again, so no two sessions chase each other
        or self._layer is not None  # WebSocket framing lives in this process
        or self._relay.ssl_context is not None  # so does TLS state
        # hs2 still queued here would be lost. A guard only: hs2 is the first thing
        # we write and far smaller than a socket's buffer, so no client can make it so.
        or transport.get_write_buffer_size()
        or not handoff.has(node)
    ):
        return False
    raw = transport.get_extra_info("socket")
    if raw is None:
        return False
    # From here to the abort nothing else runs: what the client sends next stays in
    # the socket, for the sibling to read.
    if not handoff.send(node, raw.fileno(), hs.suspend(event, self._loop.time(), self.opened_at)):
        return False
    # Closing our descriptor sends nothing (no FIN, no reset): the sibling holds the connection now.
    self.outcome = Outcome.HANDED_OFF
    self.desc = f"to node {node}"
    self._hs = None
    transport.abort()
    return True


def claimed(self: Session, refusal: str | None) -> None:
    """The router's answer to hs3's claim: at once on one node, a registry round trip later in a cluster."""
    event, self._claiming = self._claiming, None
    if event is None or self.outcome is not None:  # closed meanwhile: give the chid back
        if refusal is None:
            self._router.release(self)
        return
    if refusal is not None:
        refuse_claim(self, refusal)
        return
    self._registered = True
    service = self._relay.visits.names_service(self.recvers)
    if self._service:
        self._relay.visits.service_online(self)
    if service is not None:
        visits.begin(self, service)  # hangup: with the session that answers, not the service
        return
    if event.hangup and self.recvers:
        self._router.hang_up_with(self, self.recvers)
    if event.wait and self.recvers and len(self._router.online(self.recvers)) < len(self.recvers):
        # Reading goes on while we wait, so that a client that gives up is
        # seen (its FIN closes the session and frees its chid); what it
        # sends meanwhile is data, held up to one line's worth, then TCP
        # pushes back.
        self._waiting = True
        self._router.watch(self.recvers, self._on_peer_online)
        return
    finish(self)


def refuse_claim(self: Session, code: str) -> None:
    if code == "unavailable":
        desc = "the cluster registry is unreachable; retry"
        refuse(self, Outcome.UNAVAILABLE, desc, code)
    else:
        desc = f"chid {quote(self.chid)} came online during the handshake"
        refuse(self, Outcome.CHID_IN_USE, desc, "chid_in_use")


def finish_waiting(self: Session) -> None:
    if self._waiting and self.outcome is None:
        service = self._relay.visits.names_service(self.recvers)
        if service is None:
            finish(self)
        elif can_visit(self, service):  # what we waited for came online as a service
            self._waiting = False
            self._router.unwatch(self.recvers or (), self._on_peer_online)
            visits.begin(self, service)


def can_visit(self: Session, service: str) -> bool:
    """A visit names the service alone (docs/protocol.md, 13); refuse anything else."""
    assert self.recvers is not None
    if len(self.recvers) == 1:
        return True
    desc = f'"recvers" names the service {quote(service)} with other chids: a visit names the service alone'
    refuse(self, Outcome.HANDSHAKE_FAILED, desc, "bad_request")
    return False


def visit_failed(self: Session, desc: str) -> None:
    """The service refused the visit, or left before answering."""
    if self._visit is not None and self.outcome is None:
        self._visit = None
        refuse(self, Outcome.VISIT_REFUSED, desc, "refused")


def finish(self: Session, peer: str | None = None) -> None:
    hs = self._hs
    assert hs is not None and self._transport is not None
    online = self._router.online(self.recvers) if self.recvers is not None else None
    trailing = hs.establish(online, peer)
    if peer is not None and not self._blockers:
        self._transport.resume_reading()  # paused if the visitor sent much before the answer
    if self._waiting:
        self._waiting = False
        self._router.unwatch(self.recvers or (), self._on_peer_online)
        if not self._blockers:
            self._transport.resume_reading()
    establish(self, hs.data_to_send())
    self._hs = None
    if self._spliceable and self.recvers is not None and len(self.recvers) == 1 and self._frames is None:
        self._splice_after = self._config.splice_after
    if trailing:
        self.data_received(trailing)


def refuse(self: Session, outcome: Outcome, desc: str, code: str) -> None:
    """Send FAIL (queued by the core unless it failed the handshake itself) and close."""
    assert self._hs is not None
    if self._hs.state is not State.FAILED:
        discard_held(self)
        self._hs.fail(desc, code)
    self.outcome = outcome
    self.desc = desc
    flush(self)
    self._close()


def discard_held(self: Session) -> None:
    """The handshake ends short of hs4: what came with or after hs3 is data never forwarded, counted here."""
    hs = self._hs
    if hs is not None and hs.state is State.ROUTING:
        self.discarded += hs.buffered


def flush(self: Session) -> None:
    if self._hs is not None and self._transport is not None:
        out = self._hs.data_to_send()
        if out:
            self._transport.write(out)


def establish(self: Session, hs4: bytes) -> None:
    """Write hs4 and whatever was delivered while waiting, then go live."""
    transport = self._transport
    assert transport is not None
    pending, self._pending = self._pending, None
    self._write_paused = False
    self.established = True
    self._raw_live = self._frames is None and not self._out_done and self._peer is None
    if hs4:
        transport.write(hs4)
    if self._layer is not None:
        self._layer.handshake_over()  # from now on data, not reply lines (docs/protocol.md, 14)
    if pending:
        transport.writelines(pending)  # one write: frames stay whole for a WebSocket end
    if self._out_done:  # its last sender finished before hs4 was out
        self._shut_down_output(transport)
    self.last_active = self._loop.time()
    self._arm_idle_timer()
    if self.LEG:
        if not self._write_paused:
            self._release_waiters()
        return
    self._meter = self._relay.quotas.meter(self.chid, self._ip, self.last_active)
    if log.isEnabledFor(logging.INFO):  # the fields cost more than the check
        fields = {
            "chid": self.chid,
            "peer": self.peer,
            "recvers": _recvers_text(self.recvers),
            "mode": "framed" if self._frames is not None else "raw",
        }
        if self._layer is not None:
            fields["transport"] = "websocket"
        log.info("session open", extra={"fields": fields})
    if not self._write_paused:
        self._release_waiters()


def in_use(chid: str) -> str:
    return f"chid {quote(chid)} is online; pick another or omit it"


def _recvers_text(recvers: tuple[str, ...] | None) -> str:
    return "*" if recvers is None else ",".join(recvers)
