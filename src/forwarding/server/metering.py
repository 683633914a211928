"""Caps and quotas applied to a session's input (the rules and the bookkeeping are in server/quotas.py).

Functions of a :class:`~forwarding.server.session.Session`, filed here like
framed.py's, so that an unmetered session's hot path pays one attribute test.
The spliced path meters in the pump (server/splice.py) with the same
:class:`~forwarding.server.quotas.Meter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .outcome import Outcome

if TYPE_CHECKING:
    from .session import Session


def received(self: Session, data: bytes) -> None:
    """An established, metered session read ``data``: forward what the quotas allow, then pace."""
    meter = self._meter
    assert meter is not None and self._transport is not None
    n = len(data)
    allowed = meter.allowance(n)
    delay = 0.0
    if allowed:
        delay = meter.charge(allowed, self._loop.time())
        self._forward(data if allowed == n else data[:allowed])
    if allowed < n:
        self.discarded += n - allowed  # the bytes past the quota: read, never forwarded
        quota_spent(self)
    elif delay and self.outcome is None:
        self._transport.pause_reading()
        meter.hold(self._loop, delay, lambda: rate_ready(self))


def quota_spent(self: Session) -> None:
    meter = self._meter
    assert meter is not None
    meter.count_cut()
    self.close(Outcome.QUOTA_EXCEEDED, meter.spent_desc())


def rate_ready(self: Session) -> None:
    """A rate cap's pause is over: read again, unless something else still holds the session."""
    if self.outcome is None and not self._blockers and self.pump is None and self._transport is not None:
        self._transport.resume_reading()
