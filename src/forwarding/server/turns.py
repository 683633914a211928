"""Turns on the event loop: no client's input holds the loop for more than a slice.

uvloop (libuv) reads a readable socket up to 32 times before it looks at the
others, each read up to 256 KiB. Forwarding a read costs microseconds, but
one full of tiny frames costs about 100 ms to execute (a framed frame, or a
WebSocket frame, is worth 7 bytes), so one client could hold every other
session for seconds. A session that has spent ``SLICE`` on its input stops
there and goes on at the loop's next turn, after everyone else's ready
callbacks, its reading paused meanwhile:

* framed frames: the rest of the read waits, in order, behind a :data:`TURN`
  among the session's blockers, as behind a receiver over its mark
  (server/framed.py);
* WebSocket bytes, which websockets parses below the Session: the layer keeps
  the unparsed rest of the read itself (server/ws.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ..routing.base import Sink

SLICE = 0.005
"""Seconds of work on one client's input before the others have their turn."""
CHECK_EVERY = 64
"""Frames between two looks at the clock (one costs about as much as a frame)."""


class _Turn:
    """The blocker of a session waiting for its next turn: a receiver that is never over its mark."""

    __slots__ = ()

    def add_waiter(self, sender: object) -> None:
        pass

    def discard_waiter(self, sender: object) -> None:
        pass


TURN = cast("Sink", _Turn())
