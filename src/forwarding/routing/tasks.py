"""Ending background tasks on the way out, within a bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("forwarding.routing")


async def cancel_all(tasks: Iterable[asyncio.Task[None]], timeout: float) -> None:
    """Cancel ``tasks`` and wait for them to end, for at most ``timeout`` seconds.

    A cancellation can be lost: Python 3.11's ``asyncio.wait_for`` returns the
    inner result when it completes in the same step as the cancel (fixed in
    3.12), and a library may catch ``CancelledError``. A task that lost one goes
    on running, and an unbounded ``await`` on it would hang the shutdown: so
    the cancel is repeated until the task ends or time runs out.
    """
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning("background tasks did not end", extra={"fields": {"tasks": len(pending)}})
            return
        _, pending = await asyncio.wait(pending, timeout=min(left, 0.1))
