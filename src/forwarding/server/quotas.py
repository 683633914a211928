"""Bandwidth caps and byte-volume quotas: what a client may send, how fast and how much.

Only what a client *sends* after its handshake is charged, never what it
receives: charging receivers would let anyone who knows a chid spend that
chid's quota, or its address's, by sending to it. Every byte the relay carries
was sent by somebody, so capping senders caps the relay's work (a fan-out
multiplies it by at most the receivers one sender may name).

* A **rate cap** (per session, and per source address for all its sessions
  together) never loses a byte: when a token bucket is spent, the relay stops
  reading the client for as long as the bucket takes to refill, and TCP pushes
  back on the client.
* A **quota** (bytes per chid, and per source address, per UTC hour or day) is
  hard: the byte past it is not forwarded (it is counted as discarded), and
  the session ends with outcome ``quota_exceeded``; a handshake whose chid or
  address has nothing left gets FAIL ``quota_exceeded``.

Pure bookkeeping with the clocks passed in, like admission.py: the session
(server/metering.py) and the splice pump call it. Quotas live in the relay's
memory: a restart forgets them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.messages import quote
from .admission import source_key

PERIODS = {"hour": 3600, "day": 86400}

BURST_SECONDS = 0.1
"""A bucket holds this much of its rate: a capped client may send that much at once, then is paced."""
MIN_BURST = 16 * 1024
"""...and at least this many bytes, so that a slow cap is not paced in splinters."""


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    session_rate: int = 0
    """Bytes per second one session may send; 0: no cap."""
    ip_rate: int = 0
    """Bytes per second the sessions of one source address (an IPv6 /64) may send together; 0: no cap."""
    chid_quota: int = 0
    """Bytes one chid may send per period; 0: no quota."""
    ip_quota: int = 0
    """Bytes one source address may send per period, all its sessions together; 0: no quota."""
    period: str = "day"
    """``hour`` or ``day``: quotas start afresh at each UTC hour or midnight."""
    max_tracked: int = 100_000
    """Chids, and addresses, the ledger remembers per period; past it the idle ones that sent least are forgotten."""

    @property
    def any(self) -> bool:
        return bool(self.session_rate or self.ip_rate or self.chid_quota or self.ip_quota)


class Bucket:
    """A token bucket in bytes. Charged after a read (the bytes are in already), so it may go negative."""

    __slots__ = ("rate", "capacity", "tokens", "stamp", "users")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.capacity = max(float(MIN_BURST), rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.stamp = now
        self.users = 0

    def take(self, n: int, now: float) -> float:
        """Charge ``n`` bytes; return the seconds to wait before reading again (0: none)."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate) - n
        self.tokens, self.stamp = tokens, now
        return -tokens / self.rate if tokens < 0 else 0.0


class Usage:
    """What one key has sent this period, and how many open sessions hold it."""

    __slots__ = ("used", "live")

    def __init__(self) -> None:
        self.used = 0
        self.live = 0


class Ledger:
    """Bytes sent per key (a chid, or an address) in the current period."""

    __slots__ = ("entries", "forgotten")

    def __init__(self) -> None:
        self.entries: dict[str, Usage] = {}
        self.forgotten = 0

    def used(self, key: str) -> int:
        entry = self.entries.get(key)
        return 0 if entry is None else entry.used

    def hold(self, key: str, max_tracked: int) -> Usage:
        """The key's entry, held by one more session (never forgotten while held)."""
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= max_tracked:
                self._forget(max_tracked * 3 // 4)
            entry = self.entries[key] = Usage()
        entry.live += 1
        return entry

    def _forget(self, keep: int) -> None:
        # Sorting the idle entries costs O(n log n) once per max_tracked / 4 new
        # keys: amortised O(log n) each. Forgetting the least used forgives the
        # least, and a flood of new chids cannot push out the heavy users.
        idle = sorted((e.used, k) for k, e in self.entries.items() if not e.live)
        for _, key in idle[: max(0, len(self.entries) - keep)]:
            del self.entries[key]
            self.forgotten += 1


class Quotas:
    """The relay's ledgers and per-address buckets; :meth:`meter` gives each new session its own view."""

    def __init__(self, limits: QuotaLimits, wall: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._wall = wall
        self.window = -1
        """The current period's number; a meter whose entries are of another period fetches new ones."""
        self._next_roll = -1.0  # wall time at which the current period ends
        self.chids = Ledger()
        self.ips = Ledger()
        self._ip_buckets: dict[str, Bucket] = {}
        self.holds = 0
        """Times a rate cap paused a client."""
        self.held_seconds = 0.0
        self.refused = {"chid": 0, "ip": 0}
        """Handshakes refused because their chid or address had no quota left."""
        self.cut = {"chid": 0, "ip": 0}
        """Sessions ended mid-stream by a quota."""

    def roll(self) -> int:
        """The current period, started afresh if a new one has begun; called before every quota check."""
        now = self._wall()
        if now >= self._next_roll:
            seconds = PERIODS[self.limits.period]
            window = int(now // seconds)
            if window != self.window:
                self.window = window
                self.chids.entries = {}
                self.ips.entries = {}
            self._next_roll = (window + 1) * seconds
        return self.window

    def renews_at(self) -> str:
        return time.strftime("%H:%M UTC", time.gmtime(self._next_roll))

    def refusal(self, chid: str, ip: str) -> str | None:
        """Why a handshake for ``chid`` from ``ip`` must be refused, or ``None``."""
        lim = self.limits
        if not (lim.chid_quota or lim.ip_quota):
            return None
        self.roll()
        if lim.chid_quota and self.chids.used(chid) >= lim.chid_quota:
            self.refused["chid"] += 1
            return self.spent_desc("chid", chid, lim.chid_quota)
        if lim.ip_quota and self.ips.used(source_key(ip)) >= lim.ip_quota:
            self.refused["ip"] += 1
            return self.spent_desc("ip", source_key(ip), lim.ip_quota)
        return None

    def spent_desc(self, scope: str, key: str, quota: int) -> str:
        who = f"chid {quote(key)}" if scope == "chid" else f"source address {key}"
        return f"{who} has sent its quota of {quota} bytes this {self.limits.period}; it renews at {self.renews_at()}"

    def meter(self, chid: str, ip: str, now: float) -> Meter | None:
        """A new session's meter under the limits of now (a reload changes new sessions only); ``None``: none."""
        if not self.limits.any:
            return None
        return Meter(self, chid, source_key(ip), now)

    def ip_bucket(self, key: str, rate: int, now: float) -> Bucket:
        bucket = self._ip_buckets.get(key)
        if bucket is None or bucket.rate != rate:  # a reload changed the rate: new sessions share a new one
            bucket = self._ip_buckets[key] = Bucket(rate, now)
        bucket.users += 1
        return bucket

    def ip_bucket_released(self, key: str, bucket: Bucket) -> None:
        bucket.users -= 1
        if not bucket.users and self._ip_buckets.get(key) is bucket:
            del self._ip_buckets[key]

    def tracked(self) -> int:
        return len(self.chids.entries) + len(self.ips.entries) + len(self._ip_buckets)


class Meter:
    """One session's caps and quotas, fixed when it was established.

    Per read it costs a few attribute operations: the ledger entries are held
    by reference and fetched again only when a new period begins.
    """

    __slots__ = (
        "_quotas",
        "chid",
        "ip",
        "_bucket",
        "_ip_bucket",
        "_chid_quota",
        "_ip_quota",
        "_max_tracked",
        "_window",
        "_chid_usage",
        "_ip_usage",
        "burst",
        "_timer",
        "_on_ready",
        "spent",
    )

    def __init__(self, quotas: Quotas, chid: str, ip: str, now: float) -> None:
        lim = quotas.limits
        self._quotas = quotas
        self.chid = chid
        self.ip = ip
        self._bucket = Bucket(lim.session_rate, now) if lim.session_rate else None
        self._ip_bucket = quotas.ip_bucket(ip, lim.ip_rate, now) if lim.ip_rate else None
        self._chid_quota = lim.chid_quota
        self._ip_quota = lim.ip_quota
        self._max_tracked = lim.max_tracked
        self._window = -1
        self._chid_usage: Usage | None = None
        self._ip_usage: Usage | None = None
        if self._chid_quota or self._ip_quota:
            self._fetch()
        capacities = [b.capacity for b in (self._bucket, self._ip_bucket) if b is not None]
        self.burst = int(min(capacities)) if capacities else 1 << 62
        """The most the splice pump moves between two charges: a capped pump is paced in bursts this size."""
        self._timer: asyncio.TimerHandle | None = None
        self._on_ready: Callable[[], None] | None = None
        self.spent: tuple[str, str, int] | None = None
        """Which quota ran out (scope, key, quota), once one has."""

    def _fetch(self) -> None:
        """Hold this period's ledger entries (a new period has new ones)."""
        q = self._quotas
        self._release()
        self._window = q.roll()
        if self._chid_quota:
            self._chid_usage = q.chids.hold(self.chid, self._max_tracked)
        if self._ip_quota:
            self._ip_usage = q.ips.hold(self.ip, self._max_tracked)

    def _release(self) -> None:
        for usage in (self._chid_usage, self._ip_usage):
            if usage is not None:
                usage.live -= 1
        self._chid_usage = self._ip_usage = None

    @property
    def holding(self) -> bool:
        """A rate cap is pausing this session's reads."""
        return self._timer is not None

    def allowance(self, n: int) -> int:
        """How many of the next ``n`` bytes the quotas let through; less than ``n`` sets :attr:`spent`."""
        if not (self._chid_quota or self._ip_quota):
            return n
        if self._quotas.roll() != self._window:
            self._fetch()
        allowed = n
        usage = self._chid_usage
        if usage is not None and self._chid_quota - usage.used < allowed:
            allowed = max(0, self._chid_quota - usage.used)
            self.spent = ("chid", self.chid, self._chid_quota)
        usage = self._ip_usage
        if usage is not None and self._ip_quota - usage.used < allowed:
            allowed = max(0, self._ip_quota - usage.used)
            self.spent = ("ip", self.ip, self._ip_quota)
        return allowed

    def charge(self, n: int, now: float) -> float:
        """Count ``n`` bytes sent (after :meth:`allowance`); return the seconds to wait before the next read."""
        if self._chid_usage is not None:
            self._chid_usage.used += n
        if self._ip_usage is not None:
            self._ip_usage.used += n
        delay = 0.0
        if self._bucket is not None:
            delay = self._bucket.take(n, now)
        if self._ip_bucket is not None:
            delay = max(delay, self._ip_bucket.take(n, now))
        return delay

    def spent_desc(self) -> str:
        assert self.spent is not None
        return self._quotas.spent_desc(*self.spent)

    def count_cut(self) -> None:
        assert self.spent is not None
        self._quotas.cut[self.spent[0]] += 1

    def hold(self, loop: asyncio.AbstractEventLoop, delay: float, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` after ``delay`` seconds: the caller has stopped reading meanwhile."""
        self.cancel_hold()
        q = self._quotas
        q.holds += 1
        q.held_seconds += delay
        self._on_ready = on_ready
        self._timer = loop.call_later(delay, self._ready)

    def _ready(self) -> None:
        on_ready, self._on_ready, self._timer = self._on_ready, None, None
        if on_ready is not None:
            on_ready()

    def cancel_hold(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._on_ready = None

    def close(self) -> None:
        """The session ended: its entries may be forgotten, its address's bucket is shared by fewer. Idempotent."""
        self.cancel_hold()
        self._release()
        self._chid_quota = self._ip_quota = 0
        if self._ip_bucket is not None:
            self._quotas.ip_bucket_released(self.ip, self._ip_bucket)
            self._ip_bucket = None
