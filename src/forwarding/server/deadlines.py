"""Handshake and idle deadlines in shared buckets: one event-loop timer per tick that has any.

A timer handle per session costs about 600 bytes in uvloop (the handle, its
libuv timer and their wrappers), and a flood of new connections would pay for
creating and cancelling one each; so deadlines that fall in the same ``tick``
share one bucket and one timer. A deadline fires up to one tick late, never
early.

A bucket is a doubly linked list threaded through the items themselves (a
timer wheel, as in the Linux kernel and libuv): two pointers in an object that
exists anyway, where an entry in a set costs 40 to 100 bytes with the table's
spare room. Adding and discarding are O(1), and a closed session is unlinked at
once, so a bucket never keeps one alive.
"""

from __future__ import annotations

import asyncio
import math


class Expiring:
    """Something that can hold one deadline in :class:`Deadlines`; the links of its bucket live here."""

    __slots__ = ("_deadline_slot", "_deadline_prev", "_deadline_next")

    def __init__(self) -> None:
        self._deadline_slot: int | None = None
        self._deadline_prev: Expiring | None = None
        self._deadline_next: Expiring | None = None

    @property
    def deadline_pending(self) -> bool:
        return self._deadline_slot is not None

    def deadline_passed(self) -> None:
        """The bucket holding this object's deadline has come due (it is no longer in one)."""
        raise NotImplementedError


_FIRING = -(1 << 62)
"""The slot of an item whose bucket has come due and whose call is still to come."""


KEEP_EMPTY = 1.0
"""Seconds ahead within which an emptied bucket keeps its timer by default; farther ones are dropped at once.

The relay keeps them for its handshake timeout and a second more: every
connection's first deadline falls there, and a flood of connections that
close before it then shares one timer per tick instead of creating and
cancelling one each (7% of a handshake's CPU in process). At most
``keep_empty / tick`` empty buckets wait so, 110 at the defaults."""


class Deadlines:
    __slots__ = ("_loop", "_tick", "_heads", "_timers", "keep_empty")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1, keep_empty: float = KEEP_EMPTY) -> None:
        self._loop = loop
        self._tick = tick
        self.keep_empty = keep_empty
        # slot -> first item of its list. An emptied bucket that comes due
        # within keep_empty stays as None until its timer fires, so connections
        # that open and close within one tick share that timer; a farther one is
        # dropped with its timer, or every distinct timeout a client asks for
        # would leave a bucket behind until it came due (up to a day later).
        self._heads: dict[int, Expiring | None] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def add(self, item: Expiring, when: float) -> None:
        """Call ``item.deadline_passed()`` at ``when`` or up to one tick later, replacing its pending deadline."""
        if item._deadline_slot is not None:
            self.discard(item)
        slot = math.floor(when / self._tick) + 1
        heads = self._heads
        if slot in heads:
            head = heads[slot]
            if head is not None:
                head._deadline_prev = item
        else:
            self._timers[slot] = self._loop.call_at(slot * self._tick, self._fire, slot)
            head = None
        item._deadline_next = head
        item._deadline_prev = None
        item._deadline_slot = slot
        self._heads[slot] = item

    def discard(self, item: Expiring) -> None:
        """Forget ``item``'s pending deadline, if it has one."""
        slot = item._deadline_slot
        if slot is None:
            return
        if slot == _FIRING:  # unlinked already: just not called
            item._deadline_slot = None
            return
        prev, nxt = item._deadline_prev, item._deadline_next
        if nxt is not None:
            nxt._deadline_prev = prev
        if prev is not None:
            prev._deadline_next = nxt
        elif nxt is not None or slot * self._tick <= self._loop.time() + self.keep_empty:
            self._heads[slot] = nxt
        else:  # emptied, and not due soon
            del self._heads[slot]
            self._timers.pop(slot).cancel()
        item._deadline_slot = item._deadline_prev = item._deadline_next = None

    @property
    def buckets(self) -> int:
        """Buckets with a timer, empty ones included (for tests and metrics)."""
        return len(self._timers)

    def __len__(self) -> int:
        """Pending deadlines (walks every bucket: for tests and the curious)."""
        n = 0
        for head in self._heads.values():
            while head is not None:
                n += 1
                head = head._deadline_next
        return n

    def _fire(self, slot: int) -> None:
        # Unlink the whole bucket first: a callback may close, discard or re-arm
        # any other item in it, and that must be honoured.
        due = []
        self._timers.pop(slot, None)
        item = self._heads.pop(slot, None)
        while item is not None:
            nxt = item._deadline_next
            item._deadline_prev = item._deadline_next = None
            item._deadline_slot = _FIRING
            due.append(item)
            item = nxt
        for item in due:
            if item._deadline_slot == _FIRING:  # neither discarded nor re-armed meanwhile
                item._deadline_slot = None
                item.deadline_passed()
