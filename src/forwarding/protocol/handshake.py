"""The server side of the handshake as an I/O-free state machine.

Feed it bytes with :meth:`ServerHandshake.receive_data`, pull events with
:meth:`~ServerHandshake.next_event`, answer them with :meth:`accept_chid`,
:meth:`establish` or :meth:`fail`, and write out :meth:`data_to_send` after
every call. Time comes in as a number: :attr:`deadline` says when the handshake
expires and :meth:`handle_timeout` applies it. No sockets, no clock, no asyncio:
the rules are tested by feeding bytes (docs/protocol.md, "Handshake").

Which request each state accepts is the table :data:`TRANSITIONS`; anything else
is a FAIL whose desc names what was expected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .frames import DEFAULT_MAX_FRAME
from .linebuffer import LineBuffer, LineTooLong, TooMuchInput
from .messages import HandshakeError, Hs1, Hs3, Request, encode, hs2, hs4_fail, hs4_ok, own_chid_desc, parse_request
from .sealing import Sealer, SealError, new_challenge


class State(enum.Enum):
    AWAIT_HS1 = "awaiting hs1"
    CHOOSING_CHID = "choosing a chid"  # Hs1Received was handed out; the session must answer it
    AWAIT_HS3 = "awaiting hs3"
    ROUTING = "routing"  # Hs3Received was handed out; the session must answer it
    ESTABLISHED = "established"
    FAILED = "failed"


TRANSITIONS: dict[State, dict[type[Request], State]] = {
    State.AWAIT_HS1: {Hs1: State.CHOOSING_CHID},
    State.AWAIT_HS3: {Hs3: State.ROUTING},
}
"""State -> request type -> next state. A request missing here is out of order."""

_EXPECTED = {State.AWAIT_HS1: "hs1", State.AWAIT_HS3: "hs3"}


@dataclass(frozen=True, slots=True)
class HandshakeLimits:
    """The bounds one handshake works within; see docs/operations.md for the flags."""

    handshake_timeout: float = 10.0
    """Seconds from connect to hs4 before the server gives up."""
    max_line: int = 64 * 1024
    """Longest handshake line in bytes; also bounds the handshake's buffer."""
    default_idle_timeout: float = 3600.0
    """Idle timeout for a session whose hs3 names none."""
    max_idle_timeout: float = 86400.0
    """Largest idle timeout a client may ask for; larger asks are lowered to it."""
    max_frame: int = DEFAULT_MAX_FRAME
    """Largest frame payload a framed session may send; announced in hs4."""


@dataclass(frozen=True, slots=True)
class Hs1Received:
    """The client sent hs1. Answer with ``accept_chid(chid)`` or ``fail(desc)``."""

    chid: str | None


@dataclass(frozen=True, slots=True)
class Hs3Received:
    """The client sent hs3. Answer with ``establish(online)`` or ``fail(desc)``."""

    recvers: tuple[str, ...] | None
    timeout: float
    """The idle timeout that applies: asked for, or the default, capped by the maximum."""
    wait: bool
    hangup: bool = False
    framed: bool = False
    service: bool = False
    """Offer a service: sessions that name this chid become visits (docs/protocol.md, 13)."""
    accept: str | None = None
    """Answer the visit with this ticket."""


@dataclass(frozen=True, slots=True)
class Suspended:
    """A handshake between hs3 and its answer, as data, for another process of the relay to take on.

    ``serve --workers`` hands a connection to the worker that holds its one
    receiver (server/handoff.py); that worker resumes the handshake with
    :meth:`ServerHandshake.resume` and answers hs3 as if it had read it.
    """

    chid: str
    challenge: str | None
    opened: bool
    """The client's lines are sealed, and so must the replies be (section 9)."""
    event: Hs3Received
    rest: bytes
    """The bytes after hs3: the first data."""
    age: float
    """Seconds since the connection was accepted: the handshake's deadline goes on from there."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The handshake failed; a FAIL reply is queued and the connection must close."""

    desc: str
    code: str = "bad_request"


class _Sentinel(enum.Enum):
    NEED_DATA = "need data"
    PAUSED = "paused"


NEED_DATA = _Sentinel.NEED_DATA
"""No complete request is buffered; feed more bytes."""
PAUSED = _Sentinel.PAUSED
"""An event is waiting for its answer, or the handshake is over."""

Event = Hs1Received | Hs3Received | Failed


class ServerHandshake:
    """One connection's handshake, from the first byte to hs4.

    With a ``sealer`` (the server has a secret), every line in both directions
    is sealed, hs2 carries a fresh ``challenge`` that hs3 must echo, and replies
    are plain JSON only until the first client line has been opened: a client
    without the key still gets a FAIL it can read (docs/protocol.md, section 9).
    """

    def __init__(
        self, limits: HandshakeLimits, now: float, sealer: Sealer | None = None, challenge: str | None = None
    ) -> None:
        self.limits = limits
        self._sealer = sealer
        self._opened = False
        self.challenge = (challenge or new_challenge()) if sealer is not None else None
        self.state = State.AWAIT_HS1
        self.chid: str | None = None
        self.idle_timeout = limits.default_idle_timeout
        """The idle timeout that applies once hs3 is in."""
        self.framed = False
        """hs3 asked for framed mode."""
        self.deadline: float | None = now + limits.handshake_timeout
        """When the handshake expires; ``None`` once it is over."""
        # Two lines of at most max_line, and room for blank lines around them.
        self._lines = LineBuffer(limits.max_line, 4 * limits.max_line)
        self._out: list[bytes] = []
        self._resumed: Hs3Received | None = None
        self.resumed = False
        """Taken on from another process at hs3: it is never handed on again."""

    @classmethod
    def resume(cls, limits: HandshakeLimits, now: float, sealer: Sealer | None, s: Suspended) -> ServerHandshake:
        """A handshake :meth:`suspend`-ed elsewhere; its first event is the hs3 it was suspended at."""
        if (sealer is None) != (s.challenge is None) or (s.opened and sealer is None):
            raise ValueError("suspended with another secret setting")  # a reload raced the hand-off
        hs = cls(limits, now - s.age, sealer, s.challenge)
        hs._opened = s.opened
        hs.chid = s.chid
        hs.state = State.ROUTING
        hs.idle_timeout = s.event.timeout
        hs.framed = s.event.framed
        hs._lines.feed(s.rest)
        hs._resumed = s.event
        hs.resumed = True
        return hs

    def suspend(self, event: Hs3Received, now: float, opened_at: float) -> Suspended:
        """This handshake at ``event`` (just handed out, not answered) as data; it stays as it is here."""
        self._expect(State.ROUTING)
        assert self.chid is not None
        return Suspended(self.chid, self.challenge, self._opened, event, self._lines.peek(), now - opened_at)

    # -- input -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def next_event(self) -> Event | _Sentinel:
        if self._resumed is not None:
            event, self._resumed = self._resumed, None
            return event
        transitions = TRANSITIONS.get(self.state)
        if transitions is None:
            return PAUSED
        try:
            self._lines.skip_blank()  # blank lines carry nothing
            line = self._lines.next_line()
            if line is None:
                return NEED_DATA
            line = line.rstrip(b"\r")
            if self._sealer is not None:
                line = self._sealer.open(line, _EXPECTED[self.state])
                self._opened = True
            request = parse_request(line)
            next_state = transitions.get(type(request))
            if next_state is None:
                raise HandshakeError(f"expected {_EXPECTED[self.state]}, got {_step(request)}")
            if isinstance(request, Hs3) and self.challenge is not None and request.challenge != self.challenge:
                raise HandshakeError(
                    "hs3 challenge does not match the one in hs2 (replayed handshake?)", "challenge_mismatch"
                )
            if isinstance(request, Hs3) and self.chid is not None and self.chid in (request.recvers or ()):
                raise HandshakeError(own_chid_desc(self.chid))
        except (HandshakeError, SealError) as exc:
            return self.fail(exc.desc, exc.code)
        except (LineTooLong, TooMuchInput) as exc:
            return self.fail(str(exc))
        self.state = next_state
        if isinstance(request, Hs1):
            return Hs1Received(request.chid)
        self.idle_timeout = self._idle_timeout(request)
        self.framed = request.framed
        return Hs3Received(
            request.recvers,
            self.idle_timeout,
            request.wait,
            request.hangup,
            request.framed,
            request.service,
            request.accept,
        )

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (after hs3: the first data)."""
        return len(self._lines)

    def handle_timeout(self, now: float) -> Failed | None:
        """Fail the handshake if its deadline has passed."""
        if self.deadline is None or now < self.deadline:
            return None
        return self.fail(f"handshake not completed within {self.limits.handshake_timeout:g} s", "handshake_timeout")

    # -- answers from the session -----------------------------------------

    def accept_chid(self, chid: str) -> None:
        self._expect(State.CHOOSING_CHID)
        self.chid = chid
        self.state = State.AWAIT_HS3
        self._reply("hs2", hs2(chid, self.challenge))

    def establish(self, online: list[str] | None, peer: str | None = None) -> bytes:
        """Queue hs4 OK and return the bytes that followed hs3: they are data.

        ``peer``: the other end of a visit (docs/protocol.md, 13)."""
        self._expect(State.ROUTING)
        assert self.chid is not None
        self.state = State.ESTABLISHED
        self.deadline = None
        max_frame = self.limits.max_frame if self.framed else None
        self._reply("hs4", hs4_ok(self.chid, self.idle_timeout, online, max_frame, peer))
        return self._lines.take_rest()

    def fail(self, desc: str, code: str = "bad_request") -> Failed:
        self.state = State.FAILED
        self.deadline = None
        self._reply("hs4", hs4_fail(desc, code))
        self._lines.take_rest()  # nothing more will be read; free the buffer
        return Failed(desc, code)

    # -- output ------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _reply(self, step: str, message: dict[str, Any]) -> None:
        line = encode(message)
        if self._sealer is not None and self._opened:
            line = self._sealer.seal(line[:-1], step)
        self._out.append(line)

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"handshake is {self.state.value}, not {state.value}")

    def _idle_timeout(self, hs3: Hs3) -> float:
        asked = self.limits.default_idle_timeout if hs3.timeout is None else hs3.timeout
        return min(asked, self.limits.max_idle_timeout)


def _step(request: Request) -> str:
    return "hs1" if isinstance(request, Hs1) else "hs3"
