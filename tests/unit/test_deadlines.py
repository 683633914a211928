"""Shared deadline buckets: never early, in order, each item once, discard and re-arm honoured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from forwarding.server.deadlines import Deadlines, Expiring


class Item(Expiring):
    __slots__ = ("name", "fired", "then")

    def __init__(self, name: str, fired: list[tuple[str, float]], then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.name, self.fired, self.then = name, fired, then

    def deadline_passed(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))
        if self.then is not None:
            self.then()


def run(main: Callable[[asyncio.AbstractEventLoop, Deadlines], object]) -> None:
    async def wrapper() -> None:
        loop = asyncio.get_running_loop()
        await main(loop, Deadlines(loop, tick=0.01))  # type: ignore[misc]

    asyncio.run(asyncio.wait_for(wrapper(), 5))


async def until(fired: list[tuple[str, float]], n: int) -> None:
    while len(fired) < n:
        await asyncio.sleep(0.005)


def test_deadlines_fire_in_order_never_early_and_can_be_discarded():
    fired: list[tuple[str, float]] = []
    whens: dict[str, float] = {}

    async def main(loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        now = loop.time()
        whens.update({"late": now + 0.05, "early": now + 0.02, "same-tick": now + 0.021})
        for name, when in whens.items():
            deadlines.add(Item(name, fired), when)
        dropped = Item("discarded", fired)
        deadlines.add(dropped, now + 0.03)
        deadlines.discard(dropped)
        assert not dropped.deadline_pending and len(deadlines) == 3
        # "late" comes due after the discarded deadline's tick, so once it has
        # fired, the discarded one had its chance to (wrongly) fire too.
        await until(fired, len(whens))
        assert len(deadlines) == 0

    run(main)
    names = [name for name, _ in fired]
    assert sorted(names) == ["early", "late", "same-tick"]
    assert names[-1] == "late"
    for name, at in fired:
        assert at >= whens[name], f"{name} fired {whens[name] - at:.4f} s early"


def test_discarding_the_head_middle_or_tail_of_a_bucket_keeps_the_rest():
    fired: list[tuple[str, float]] = []

    async def main(loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        when = loop.time() + 0.02
        items = [Item(str(i), fired) for i in range(7)]
        for item in items:
            deadlines.add(item, when)  # one bucket; each new item becomes its head
        for i in (6, 3, 0):  # head, middle, tail
            deadlines.discard(items[i])
        deadlines.discard(items[3])  # twice is harmless
        assert len(deadlines) == 4
        await until(fired, 4)
        await asyncio.sleep(0.03)  # the bucket's timer has run: nothing more comes

    run(main)
    assert sorted(name for name, _ in fired) == ["1", "2", "4", "5"]


def test_adding_again_moves_an_item_to_its_new_deadline():
    fired: list[tuple[str, float]] = []
    due: dict[str, float] = {}

    async def main(loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        item = Item("moved", fired)
        deadlines.add(item, loop.time() + 0.02)
        due["moved"] = loop.time() + 0.06
        deadlines.add(item, due["moved"])
        assert len(deadlines) == 1
        await until(fired, 1)

    run(main)
    assert len(fired) == 1 and fired[0][1] >= due["moved"]


def test_a_callback_may_discard_or_rearm_others_in_the_bucket_being_fired():
    fired: list[tuple[str, float]] = []
    acted: dict[str, object] = {}

    async def main(loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        items: list[Item] = []

        def act() -> None:
            # The first to fire (a session closing another, say) discards one
            # item of its bucket that has not fired yet and re-arms another.
            if acted:
                return
            waiting = [item for item in items if item.name not in {name for name, _ in fired}]
            acted["discarded"], acted["rearmed"] = waiting[0].name, waiting[1].name
            acted["due"] = loop.time() + 0.03
            deadlines.discard(waiting[0])
            deadlines.add(waiting[1], acted["due"])  # type: ignore[arg-type]

        items += [Item(str(i), fired, act) for i in range(4)]
        when = loop.time() + 0.02
        for item in items:
            deadlines.add(item, when)
        await until(fired, 3)
        await asyncio.sleep(0.03)  # time for a wrongly called item to show up

    run(main)
    names = [name for name, _ in fired]
    assert acted["discarded"] not in names
    assert len(names) == len(set(names)) == 3
    assert names[-1] == acted["rearmed"] and fired[-1][1] >= acted["due"]  # type: ignore[operator]


def test_an_emptied_far_bucket_gives_back_its_timer_a_near_one_is_kept():
    fired: list[tuple[str, float]] = []

    async def main(loop: asyncio.AbstractEventLoop, d: Deadlines) -> None:
        now = loop.time()
        items = [Item(f"far{i}", fired) for i in range(1000)]
        for i, item in enumerate(items):  # a different timeout each: a bucket each
            d.add(item, now + 60 + i)
        assert d.buckets == 1000
        for item in items:
            d.discard(item)
        assert d.buckets == 0  # nothing left behind by sessions that closed
        near = Item("near", fired)
        d.add(near, now + 0.02)
        d.discard(near)
        assert d.buckets == 1  # kept: the next connection in this tick shares it
        await asyncio.sleep(0.05)
        assert d.buckets == 0 and fired == []

    run(main)


def test_buckets_within_keep_empty_share_one_timer_among_connections_that_come_and_go():
    fired: list[tuple[str, float]] = []

    async def main(loop: asyncio.AbstractEventLoop, d: Deadlines) -> None:
        d.keep_empty = 11.0  # the relay's: its handshake timeout and a second
        now = loop.time()
        for i in range(100):  # one connection after another, each closed before the next
            item = Item(f"hs{i}", fired)
            d.add(item, now + 10)
            d.discard(item)
        assert d.buckets == 1  # one timer for the tick, not a hundred created and cancelled
        far = Item("idle", fired)
        d.add(far, now + 3600)
        d.discard(far)
        assert d.buckets == 1  # beyond keep_empty: given back at once
        assert fired == []

    run(main)
