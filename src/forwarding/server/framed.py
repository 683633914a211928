"""Framed mode on the server (docs/protocol.md, section 12): running frames and commands.

Functions of a :class:`~forwarding.server.session.Session`, kept apart from the
connection's life cycle so that each file holds one subject; the frame format
itself is the I/O-free :mod:`forwarding.protocol.frames`. The first argument is
called ``self`` on purpose: these are the session's methods, filed here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..protocol.frames import (
    DATA,
    MAX_ONLINE,
    Close,
    CommandError,
    EndOfStream,
    Frame,
    FrameError,
    Online,
    Ping,
    Refuse,
    SetRecvers,
    Subscribe,
    parse_command,
    parse_control,
    reply_error,
    reply_ok,
)
from ..protocol.messages import own_chid_desc, quote
from . import turns, visits
from .outcome import Outcome

if TYPE_CHECKING:
    from .session import Session


def frames_received(self: Session, data: bytes) -> None:
    parser = self._frames
    assert parser is not None
    now = self.last_active = self._loop.time()
    run_frames(self, parser.feed(data))
    if not parser.buffered:
        self._partial_since = None
    elif self._partial_since is None and self.outcome is None:
        # The incomplete frame has a deadline of its own (deadline_passed checks it).
        self._partial_since = now
        due = now + self._config.frame_timeout
        if due < self.last_active + self.idle_timeout:
            self._relay.deadlines.add(self, due)


def run_frames(self: Session, frames: list[Frame]) -> None:
    """Execute frames in order; stop at a reply that leaves us over our mark (12.3)."""
    parser = self._frames
    assert parser is not None
    # Every complete frame before a bad header is executed first, however
    # TCP cut the stream (docs/protocol.md, 12.2).
    deadline = time.monotonic() + turns.SLICE
    for i, frame in enumerate(frames):
        if self.outcome is not None:
            return
        if i and not i % turns.CHECK_EVERY and time.monotonic() > deadline:
            # Our slice of the loop is spent (server/turns.py): the rest at the next turn.
            self._backlog = frames[i:]
            self.throttle(turns.TURN)
            self._loop.call_soon(self.unthrottle, turns.TURN)
            return
        if frame.kind == DATA:
            if self._in_done or self._service:
                why = "a service session sends no data" if self._service else "a data frame after the eof command"
                self._frame_error(FrameError(why))
                return
            self.bytes_in += len(frame.payload)
            dropped = self._router.route(self, self.recvers, frame.payload)
            if dropped:
                self.dropped += dropped
            continue
        self._command(frame.payload)
        if self._write_paused and self.outcome is None:
            # Our own replies are piling up unread (a 29-byte command may be
            # answered with 1 MB): stop here, not at the end of the read, and
            # go on with the rest once they drain, as for any receiver over
            # its mark. At most one reply beyond the mark is queued.
            if i + 1 < len(frames):
                self._backlog = frames[i + 1 :]
            self.throttle(self)
            return
    if parser.error is not None:
        self._frame_error(parser.error)


def command(self: Session, payload: bytes | memoryview) -> None:
    try:
        ident, cmd = parse_command(parse_control(payload))
    except CommandError as exc:
        self._send_control(reply_error(exc.ident, exc.desc))
        return
    except FrameError as exc:
        self._frame_error(exc)
        return
    router = self._router
    if isinstance(cmd, SetRecvers):
        if cmd.recvers is not None and self.chid in cmd.recvers:
            self._send_control(reply_error(ident, own_chid_desc(self.chid)))
            return
        service = self._relay.visits.names_service(cmd.recvers)
        if service is not None or self._service:
            why = (
                "a service session sends no data"
                if self._service
                else f"{quote(service or '')} is a service: visit it from a new session whose recvers name it alone"
            )
            self._send_control(reply_error(ident, why))
            return
        # Frames before this one went to the old recvers, frames after it go
        # to the new ones: the parser hands them over in order.
        router.retarget(self, cmd.recvers)
        self.recvers = cmd.recvers
        if self._subscribed:
            router.subscribe(self, self.recvers)
        self._send_control(reply_ok(ident, recvers=list(cmd.recvers or ()), online=visible_online(self)))
    elif isinstance(cmd, Online):
        self._send_control(reply_ok(ident, online=visible_online(self)))
    elif isinstance(cmd, Ping):
        self._send_control(reply_ok(ident, pong=True))
    elif isinstance(cmd, Subscribe):
        self._subscribed = cmd.on
        if cmd.on:
            router.subscribe(self, self.recvers)
            self._send_control(reply_ok(ident, presence=True, online=visible_online(self)))
        else:
            router.unsubscribe(self)
            self._send_control(reply_ok(ident, presence=False))
    elif isinstance(cmd, EndOfStream):
        self._send_control(reply_ok(ident))
        self._input_ended()
    elif isinstance(cmd, Refuse):
        visits.refuse(self, ident, cmd.ticket, cmd.desc)
    elif isinstance(cmd, Close):
        self._send_control(reply_ok(ident))
        self.close(Outcome.CLIENT_CLOSED, f"closed by the client: {cmd.reason}" if cmd.reason else None)


def visible_online(self: Session) -> list[str]:
    """Online chids this session may see: its recvers, or for broadcast anyone (capped)."""
    if self.recvers is not None:
        return self._router.online(self.recvers)
    return [c for c in self._router.all_online(MAX_ONLINE + 1) if c != self.chid][:MAX_ONLINE]
