"""Shared idle-deadline buckets: never early, in order, each item once, discard honoured."""

from __future__ import annotations

import asyncio

from forwarding.server.deadlines import Deadlines


class Item:
    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name, self.fired = name, fired

    def deadline_passed(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))


def test_deadlines_fire_in_order_never_early_and_can_be_discarded():
    async def main() -> tuple[list[tuple[str, float]], dict[str, float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, tick=0.01)
        fired: list[tuple[str, float]] = []
        now = loop.time()
        whens = {"late": now + 0.05, "early": now + 0.02, "same-tick": now + 0.021}
        for name, when in whens.items():
            deadlines.add(Item(name, fired), when)
        dropped = Item("discarded", fired)
        deadlines.discard(dropped, deadlines.add(dropped, now + 0.03))
        # "late" comes due after the discarded deadline's tick, so once it has
        # fired, the discarded one had its chance to (wrongly) fire too.
        while len(fired) < len(whens):
            await asyncio.sleep(0.005)
        return fired, whens

    fired, whens = asyncio.run(asyncio.wait_for(main(), 5))
    names = [name for name, _ in fired]
    assert sorted(names) == ["early", "late", "same-tick"]
    assert names[-1] == "late"
    for name, at in fired:
        assert at >= whens[name], f"{name} fired {whens[name] - at:.4f} s early"
