"""Services and visits (docs/protocol.md, section 13): one service, many visitors, one pair each.

A service is a framed session that said ``"service": true``. A session that
names it alone in its recvers is a *visitor*: its handshake is held, the
service gets a ``visit`` event with a fresh ticket, and the service answers
either with a new connection whose hs3 says ``"accept": ticket`` (the two are
then an ordinary one-to-one pair, each the other's only recver, with hangup
both ways, so a raw pair is spliced like any other) or with a ``refuse``
command. Each visitor therefore has its own connection at both ends: TCP's own
flow control keeps one stalled visitor from slowing the others.

:class:`Visits` is the relay's registry of services and unanswered visits; the
functions below are the session's visit steps, filed here (``self`` is the
session, as in :mod:`.framed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..protocol.chid import generate_chid
from ..protocol.frames import reply_error, reply_ok, visit_event
from ..protocol.messages import quote
from . import handshaking
from .outcome import Outcome

if TYPE_CHECKING:
    from .session import Session


class Visit:
    """A visitor whose handshake waits for its service's answer."""

    __slots__ = ("ticket", "visitor", "service")

    def __init__(self, ticket: str, visitor: Session, service: Session) -> None:
        self.ticket = ticket
        self.visitor = visitor
        self.service = service


class Visits:
    """Online services, and the visits they have not answered yet (bounded per service)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """Most unanswered visits one service may have; more are refused at once."""
        self.services: set[str] = set()
        """Chids of the online services: the one test an hs3 pays while none is online."""
        self._by_ticket: dict[str, Visit] = {}
        self._waiting: dict[Session, dict[str, Visit]] = {}  # service -> its unanswered visits
        self.new_ticket: Callable[[], str] = generate_chid
        """``serve --workers``: tickets that map to this worker, for acceptors to be handed here (server/handoff.py)."""

    def __len__(self) -> int:
        return len(self._by_ticket)

    def service_online(self, service: Session) -> None:
        self.services.add(service.chid)

    def names_service(self, recvers: tuple[str, ...] | None) -> str | None:
        """The first service among ``recvers``, if any."""
        if recvers is None or not self.services:
            return None
        return next((chid for chid in recvers if chid in self.services), None)

    def open(self, visitor: Session, service: Session) -> Visit | None:
        """A new visit with a fresh ticket; ``None`` if ``service`` has ``limit`` unanswered ones."""
        waiting = self._waiting.setdefault(service, {})
        if len(waiting) >= self.limit:
            return None
        ticket = self.new_ticket()  # 128 random bits: only the service learns it
        visit = self._by_ticket[ticket] = waiting[ticket] = Visit(ticket, visitor, service)
        return visit

    def get(self, ticket: str) -> Visit | None:
        return self._by_ticket.get(ticket)

    def put_back(self, visit: Visit) -> None:
        """An answer that failed (its session could not come online): the visit waits again."""
        self._by_ticket[visit.ticket] = self._waiting.setdefault(visit.service, {})[visit.ticket] = visit

    def take(self, ticket: str) -> Visit | None:
        """The visit with ``ticket``, now answered (removed); ``None`` if there is none."""
        visit = self._by_ticket.pop(ticket, None)
        if visit is not None:
            self._forget(visit)
        return visit

    def drop(self, visit: Visit) -> None:
        """The visitor left or timed out before an answer."""
        if self._by_ticket.get(visit.ticket) is visit:
            del self._by_ticket[visit.ticket]
            self._forget(visit)

    def service_gone(self, service: Session) -> list[Visit]:
        """``service`` went offline: its unanswered visits, now removed."""
        self.services.discard(service.chid)
        visits = list(self._waiting.pop(service, {}).values())
        for visit in visits:
            self._by_ticket.pop(visit.ticket, None)
        return visits

    def _forget(self, visit: Visit) -> None:
        waiting = self._waiting.get(visit.service)
        if waiting is not None:
            waiting.pop(visit.ticket, None)
            if not waiting:
                del self._waiting[visit.service]


# -- the session's steps --------------------------------------------------------


def begin(self: Session, service_chid: str) -> None:
    """The visitor's hs3 named the service alone: hold its handshake and tell the service."""
    visits = self._relay.visits
    # Only sessions become services (server/session.py registers them).
    service = cast("Session", self._router.local_sink(service_chid))
    visit = visits.open(self, service)
    if visit is None:
        desc = f"service {quote(service_chid)} has {visits.limit} visitors waiting for an answer; try again later"
        handshaking.refuse(self, Outcome.REFUSED, desc, "refused")
        return
    self._visit = visit
    service._send_control(visit_event(self.chid, visit.ticket))


def accept(self: Session, ticket: str) -> None:
    """The acceptor's hs3 answers a visit: pair the two, or refuse the acceptor."""
    visit = self._relay.visits.take(ticket)
    if visit is None or visit.visitor.outcome is not None:
        desc = f"no visit is waiting with ticket {quote(ticket)}: the visitor left, timed out or was answered"
        handshaking.refuse(self, Outcome.HANDSHAKE_FAILED, desc, "bad_request")
        return
    self.recvers = (visit.visitor.chid,)
    self._router.claim(self, lambda refusal: _accepted(self, visit, refusal))


def _accepted(self: Session, visit: Visit, refusal: str | None) -> None:
    """The acceptor's chid is claimed (or not): a cluster's registry answers a round trip later."""
    visitor = visit.visitor
    if refusal is None and (self.outcome is not None or visitor.outcome is not None):
        self._router.release(self)  # one of the two left meanwhile
    if self.outcome is not None or refusal is not None:
        if visitor.outcome is None:
            self._relay.visits.put_back(visit)  # the visit waits for another answer
        if self.outcome is None and refusal is not None:
            handshaking.refuse_claim(self, refusal)
        return
    if visitor.outcome is not None:
        desc = f"no visit is waiting with ticket {quote(visit.ticket)}: the visitor left"
        handshaking.refuse(self, Outcome.HANDSHAKE_FAILED, desc, "bad_request")
        return
    self._registered = True
    visitor._visit = None
    router = self._router
    # From now on an ordinary one-to-one pair, each the other's only recver, and
    # each closed when the other leaves: as the two ends of one TCP connection.
    router.retarget(visitor, (self.chid,))
    visitor.recvers = (self.chid,)
    router.hang_up_with(visitor, (self.chid,))
    router.hang_up_with(self, (visitor.chid,))
    self._peer, visitor._peer = visitor.chid, self.chid
    handshaking.finish(self, peer=visitor.chid)
    handshaking.finish(visitor, peer=self.chid)


def refuse(self: Session, ident: int, ticket: str, desc: str | None) -> None:
    """The service's ``refuse`` command: the visitor gets FAIL ``refused`` with the service's reason."""
    visits = self._relay.visits
    visit = visits.get(ticket)
    if visit is None or visit.service is not self:
        self._send_control(reply_error(ident, f"no visit to this service is waiting with ticket {quote(ticket)}"))
        return
    visits.take(ticket)
    self._send_control(reply_ok(ident))
    reason = f": {desc}" if desc else ""
    handshaking.visit_failed(visit.visitor, f"service {quote(self.chid)} refused the visit{reason}")


def service_left(self: Session) -> None:
    """The service went offline: every visit it had not answered fails (later: we are in release())."""
    for visit in self._relay.visits.service_gone(self):
        desc = f"service {quote(self.chid)} went offline before answering"
        self._loop.call_soon(handshaking.visit_failed, visit.visitor, desc)
