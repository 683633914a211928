"""What the relay is doing, for people and scripts: ``/api/sessions`` (JSON) and ``/status`` (a page).

Both are read-only views of the relay's own state, served by the metrics
listener (server/metrics.py) and, for the rows, by the admin socket. Bounded:
at most ``MAX_ROWS`` sessions (the busiest first) and the last ``RECENT``
closes, whatever the relay holds.
"""

from __future__ import annotations

import collections
import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .relay import Relay
    from .session import Session

MAX_ROWS = 500
RECENT = 50


class RecentCloses:
    """The last ``RECENT`` closed sessions, for the status page; the relay appends as they close."""

    def __init__(self) -> None:
        # Tuples, made into rows only when asked for: every close pays for this.
        self._closes: collections.deque[tuple[float, str, str, int, int]] = collections.deque(maxlen=RECENT)

    def add(self, session: Session) -> None:
        if not session.chid:  # a connection refused before any hs1: counted in outcomes, not listed
            return
        outcome = session.outcome.value if session.outcome is not None else "?"
        self._closes.append((time.time(), session.chid, outcome, session.bytes_in, session.bytes_out))

    def rows(self) -> list[dict[str, Any]]:
        """The closes, newest first."""
        return [
            {"at": round(at, 3), "chid": chid, "outcome": outcome, "in": n_in, "out": n_out}
            for at, chid, outcome, n_in, n_out in reversed(self._closes)
        ]


def row(session: Session, now: float) -> dict[str, Any]:
    return {
        "chid": session.chid,
        "peer": session.peer,
        "recvers": None if session.recvers is None else list(session.recvers),
        "mode": "framed" if session.framed else "raw",
        "transport": session.transport_name,
        "spliced": session.pump is not None,
        "in": session.bytes_in,
        "out": session.bytes_out,
        "dropped": session.dropped,
        "age": round(now - session.opened_at, 3),
        "idle": round(now - session.last_active, 3),
    }


def sessions(relay: Relay, limit: int | None = None) -> list[dict[str, Any]]:
    """Established sessions as rows; with ``limit``, the busiest ``limit`` of them."""
    now = relay.loop.time()
    live = [s for s in relay.sessions if s.established]
    if limit is not None and len(live) > limit:
        live.sort(key=lambda s: s.bytes_in + s.bytes_out, reverse=True)
        live = live[:limit]
    return [row(s, now) for s in live]


def snapshot(relay: Relay) -> dict[str, Any]:
    """``GET /api/sessions``."""
    stats = relay.stats
    rows = sessions(relay, MAX_ROWS)
    return {
        "time": round(time.time(), 3),
        "draining": relay.draining,
        "connections": len(relay.sessions),
        "sessions": sum(1 for s in relay.sessions if s.established),
        "shown": len(rows),
        # Totals of closed sessions plus what the live ones have moved so far.
        "bytes_in": stats.bytes_in + sum(s.bytes_in for s in relay.sessions),
        "bytes_out": stats.bytes_out + sum(s.bytes_out for s in relay.sessions),
        "closed": {outcome.value: n for outcome, n in sorted(stats.outcomes.items(), key=lambda kv: kv[0].value)},
        "recent_closes": relay.recent_closes.rows(),
        "rows": rows,
    }


def api_body(relay: Relay) -> bytes:
    return json.dumps(snapshot(relay), separators=(",", ":")).encode()


def page() -> bytes:
    """``GET /status``: server/status.html, which fetches /api/sessions every 2 s and works out rates
    from the change; everything it needs is in that one response (no external resources)."""
    global _PAGE
    if _PAGE is None:
        _PAGE = (resources.files("forwarding") / "server" / "status.html").read_bytes()
    return _PAGE


_PAGE: bytes | None = None
