"""``forwarding serve`` with timeouts and connection limits switched off: the baseline of scenario 8.

The relay has no switch for these (a public relay should never run without
them), so this launcher stubs them out before starting the real server:
admission admits everyone without bookkeeping, and deadlines (handshake and
idle timeouts) are never set. Metrics are off unless asked for, as in
production. Everything else is the relay as shipped.

    python -m benchmarks.lean [serve flags]
"""

from __future__ import annotations

import sys

from forwarding import cli
from forwarding.server.admission import Admission
from forwarding.server.deadlines import Deadlines, Expiring


def _admit(self: Admission, ip: str, now: float) -> str | None:
    return None


def _release(self: Admission, ip: str) -> None:
    return None


def _add(self: Deadlines, item: Expiring, when: float) -> None:
    return None


def _discard(self: Deadlines, item: Expiring) -> None:
    return None


Admission.admit = _admit  # type: ignore[method-assign]
Admission.release = _release  # type: ignore[method-assign]
Deadlines.add = _add  # type: ignore[method-assign]
Deadlines.discard = _discard  # type: ignore[method-assign]

if __name__ == "__main__":
    cli.main(["serve", *sys.argv[1:]])
