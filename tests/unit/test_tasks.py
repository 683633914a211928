"""cancel_all: a shutdown that a task swallowing its cancel cannot hang."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from forwarding.routing.tasks import cancel_all


@dataclass
class Stubborn:
    """A task body that loses its first ``swallow`` cancels, as a loop around 3.11's wait_for can."""

    swallow: int
    cancels: int = 0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels > self.swallow:
                    raise


def test_a_task_that_loses_a_cancel_is_cancelled_again() -> None:
    body = Stubborn(swallow=2)

    async def main() -> bool:
        task = asyncio.ensure_future(body.run())
        await asyncio.sleep(0)
        await cancel_all([task], timeout=5.0)
        return task.cancelled()

    assert asyncio.run(main())
    assert body.cancels == 3


def test_a_task_that_never_ends_is_left_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    body = Stubborn(swallow=10**9)

    async def main() -> bool:
        task = asyncio.ensure_future(body.run())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_all([task], timeout=0.3), 5.0)  # it returns: the bound is its own
        ended = task.done()
        body.swallow = 0  # let asyncio.run's own clean-up end it
        return ended

    assert asyncio.run(main()) is False
    assert body.cancels > 1
    assert "background tasks did not end" in caplog.text
