"""Handshake and idle deadlines in shared buckets: one event-loop timer per tick that has any.

A timer handle per session costs about 600 bytes in uvloop (the handle, its
libuv timer and their wrappers); a set entry costs a few dozen. A relay holding
100,000 idle sessions feels the difference, and a flood of new connections
would pay for creating and cancelling a timer each; so deadlines that fall in
the same ``tick`` share one bucket and one timer. A deadline fires up to one
tick late, never early.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol


class Expiring(Protocol):
    def deadline_passed(self) -> None:
        """The bucket holding this object's deadline has come due."""
        ...


class Deadlines:
    __slots__ = ("_loop", "_tick", "_buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        self._loop = loop
        self._tick = tick
        self._buckets: dict[int, set[Expiring]] = {}

    def add(self, item: Expiring, when: float) -> int:
        """Call ``item.deadline_passed()`` at ``when`` or up to one tick later; returns a key for :meth:`discard`."""
        slot = math.floor(when / self._tick) + 1
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            self._loop.call_at(slot * self._tick, self._fire, slot)
        bucket.add(item)
        return slot

    def discard(self, item: Expiring, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(item)

    def _fire(self, slot: int) -> None:
        for item in self._buckets.pop(slot, ()):
            item.deadline_passed()
