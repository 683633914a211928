"""Rate caps and byte quotas (server/quotas.py): the bookkeeping, with the clocks passed in."""

from __future__ import annotations

import asyncio

import pytest

from forwarding.server.quotas import MIN_BURST, Bucket, Ledger, Meter, QuotaLimits, Quotas


class Wall:
    def __init__(self, t: float = 1_800_000_000.0) -> None:  # 2027-01-15 08:00 UTC
        self.t = t

    def __call__(self) -> float:
        return self.t


def meter(q: Quotas, chid: str = "a", ip: str = "192.0.2.1", now: float = 0.0) -> Meter:
    m = q.meter(chid, ip, now)
    assert m is not None
    return m


def test_no_limits_no_meter() -> None:
    assert Quotas(QuotaLimits()).meter("a", "192.0.2.1", 0.0) is None
    assert Quotas(QuotaLimits()).refusal("a", "192.0.2.1") is None


def test_bucket_paces_to_its_rate() -> None:
    b = Bucket(1_000_000, now=0.0)
    assert b.capacity == 100_000  # 0.1 s of the rate
    assert b.take(100_000, 0.0) == 0.0  # the burst goes at once
    # 250,000 more at once: a quarter second of debt.
    assert b.take(250_000, 0.0) == pytest.approx(0.25)
    # After waiting it out, the bucket is empty, not full: the next read waits its own time.
    assert b.take(50_000, 0.25) == pytest.approx(0.05)
    # Idle for a long time refills to the capacity only.
    assert b.take(100_000, 100.0) == 0.0
    assert b.take(1, 100.0) > 0.0


def test_bucket_long_run_rate_is_the_cap() -> None:
    # Whatever the read sizes, waiting as told gives the rate over time.
    b = Bucket(2_000_000, now=0.0)
    now, sent = 0.0, 0
    for size in [65536, 262144, 1000, 131072] * 100:
        sent += size
        now += b.take(size, now)
    assert sent / now == pytest.approx(2_000_000, rel=0.02)


def test_a_slow_cap_keeps_a_minimum_burst() -> None:
    assert Bucket(1000, 0.0).capacity == MIN_BURST


def test_chid_quota_allows_exactly_the_quota() -> None:
    q = Quotas(QuotaLimits(chid_quota=1000), wall=Wall())
    m = meter(q)
    assert m.allowance(600) == 600
    m.charge(600, 0.0)
    assert m.spent is None
    assert m.allowance(600) == 400
    assert m.spent == ("chid", "a", 1000)
    m.charge(400, 0.0)
    assert m.allowance(1) == 0
    assert m.spent_desc() == 'chid "a" has sent its quota of 1000 bytes this day; it renews at 00:00 UTC'
    m.count_cut()
    assert q.cut == {"chid": 1, "ip": 0}


def test_a_spent_chid_is_refused_until_the_period_turns() -> None:
    wall = Wall()
    q = Quotas(QuotaLimits(chid_quota=1000, period="hour"), wall=wall)
    m = meter(q)
    m.charge(m.allowance(1000), 0.0)
    m.close()
    desc = q.refusal("a", "192.0.2.9")
    assert desc == 'chid "a" has sent its quota of 1000 bytes this hour; it renews at 09:00 UTC'
    assert q.refused == {"chid": 1, "ip": 0}
    assert q.refusal("b", "192.0.2.9") is None  # another chid is not concerned
    wall.t += 3600
    assert q.refusal("a", "192.0.2.9") is None


def test_ip_quota_is_shared_by_the_address_and_its_ipv6_block() -> None:
    q = Quotas(QuotaLimits(ip_quota=1000), wall=Wall())
    one = meter(q, "a", "2001:db8::1")
    two = meter(q, "b", "2001:db8::2")  # the same /64
    one.charge(one.allowance(700), 0.0)
    assert two.allowance(700) == 300
    assert two.spent == ("ip", "2001:db8::/64", 1000)
    two.charge(300, 0.0)
    assert q.refusal("c", "2001:db8::3") is not None
    assert q.refusal("c", "2001:db8:1::3") is None


def test_ip_rate_bucket_is_shared_and_forgotten_with_its_last_session() -> None:
    q = Quotas(QuotaLimits(ip_rate=1_000_000), wall=Wall())
    one = meter(q, "a", "192.0.2.1")
    two = meter(q, "b", "192.0.2.1")
    assert one.charge(100_000, 0.0) == 0.0
    assert two.charge(100_000, 0.0) == pytest.approx(0.1)  # the first one spent the shared burst
    assert q.tracked() == 1
    one.close()
    two.close()
    two.close()  # idempotent
    assert q.tracked() == 0


def test_session_and_ip_rates_the_stricter_wins() -> None:
    q = Quotas(QuotaLimits(session_rate=1_000_000, ip_rate=500_000), wall=Wall())
    m = meter(q)
    assert m.burst == 50_000  # the smaller bucket: 0.1 s of 500,000
    assert m.charge(150_000, 0.0) == pytest.approx(0.2)  # (150,000 - 50,000) / 500,000


def test_ledger_forgets_the_least_used_idle_keys_first() -> None:
    ledger = Ledger()
    ledger.hold("live", max_tracked=8).used = 1
    for i in range(7):
        entry = ledger.hold(f"k{i}", max_tracked=8)
        entry.used = 100 * (i + 1)
        entry.live -= 1  # its session closed
    assert len(ledger.entries) == 8
    ledger.hold("new", max_tracked=8)  # full: down to 6, then the new one
    assert len(ledger.entries) == 7
    assert ledger.forgotten == 2
    assert "live" in ledger.entries  # held by a session: never forgotten, however small
    assert "k0" not in ledger.entries and "k1" not in ledger.entries
    assert ledger.used("k6") == 700 and ledger.used("k0") == 0


def test_the_ledger_stays_bounded_under_a_flood_of_chids() -> None:
    q = Quotas(QuotaLimits(chid_quota=10**9, max_tracked=1000), wall=Wall())
    for i in range(20_000):
        m = meter(q, f"c{i}")
        m.charge(m.allowance(10), 0.0)
        m.close()
    assert len(q.chids.entries) <= 1000
    assert not any(e.live for e in q.chids.entries.values())


def test_reload_gives_new_sessions_the_new_limits() -> None:
    q = Quotas(QuotaLimits(session_rate=1_000_000), wall=Wall())
    old = meter(q)
    q.limits = QuotaLimits()
    assert q.meter("b", "192.0.2.1", 0.0) is None
    assert old.charge(200_000, 0.0) > 0  # the established session keeps its cap


def test_a_new_period_starts_a_live_session_afresh() -> None:
    wall = Wall()
    q = Quotas(QuotaLimits(chid_quota=1000, period="hour"), wall=wall)
    m = meter(q)
    m.charge(m.allowance(1000), 0.0)
    assert m.allowance(1) == 0
    wall.t += 3600
    assert m.allowance(1000) == 1000  # the open session's next read is in the new hour
    m.charge(10, 0.0)
    assert q.chids.used("a") == 10 and q.chids.entries["a"].live == 1
    m.close()
    assert q.chids.entries["a"].live == 0


def test_hold_calls_back_once_and_cancel_forgets() -> None:
    loop = asyncio.new_event_loop()
    try:
        q = Quotas(QuotaLimits(session_rate=1_000_000), wall=Wall())
        m = meter(q)
        called: list[int] = []
        m.hold(loop, 0.0, lambda: called.append(1))
        assert m.holding
        loop.run_until_complete(asyncio.sleep(0.01))
        assert called == [1] and not m.holding
        m.hold(loop, 0.0, lambda: called.append(2))
        m.cancel_hold()
        loop.run_until_complete(asyncio.sleep(0.01))
        assert called == [1]
        assert q.holds == 2
    finally:
        loop.close()
