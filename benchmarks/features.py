"""Scenario 8, what the features cost: the relay as shipped against one with them switched off.

* full: the relay as shipped. Handshake and idle timeouts on, connection limits
  checked on every connection (raised so that the load is not refused), and
  Prometheus metrics served and scraped once a second.
* lean: benchmarks/lean.py, the same relay with timeouts and limits stubbed out
  and no metrics.

Framed mode has no switch: a raw session pays one attribute test per read for
it, and its A/B against the commit before it is in docs/performance.md.
The two run alternating (ABBA), in the same run; medians (latency: all
samples pooled).
Cost is full / lean - 1 for times, CPU and memory, and 1 - full / lean for rates.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from collections.abc import Iterator

from . import handshakes, idle, latency, throughput
from .common import Relay, Security, Table, fmt, free_port, median

TARGET = 0.10


@contextlib.contextmanager
def scraped(ports: list[int], every: float = 1.0) -> Iterator[None]:
    """Fetch /metrics from each port every ``every`` seconds, as Prometheus would."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every):
            for port in ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                        reply.read()
                except OSError:  # between two relays of the idle runs: nobody to scrape yet
                    pass

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def run(
    runs: int = 8,
    size: int = 512 << 20,
    rounds: int = 5000,
    hs_seconds: float = 2.0,
    idle_sessions: int = 10_000,
    idle_runs: int = 3,
) -> Table:
    samples: dict[str, dict[str, list[float]]] = {"lean": {}, "full": {}}

    def add(variant: str, what: str, value: float | None) -> None:
        if value is not None:
            samples[variant].setdefault(what, []).append(value)

    pooled: dict[str, list[float]] = {"lean": [], "full": []}
    ports = [free_port(), free_port()]
    full_args = [("--metrics", f"127.0.0.1:{port}") for port in ports]
    with (
        Relay(lean=True) as lean,
        Relay("--no-splice", lean=True) as lean_plain,
        Relay(*full_args[0]) as full,
        Relay("--no-splice", *full_args[1]) as full_plain,
        scraped(ports),
    ):
        relays = {"lean": (lean, lean_plain), "full": (full, full_plain)}
        for i in range(runs):
            order = ["lean", "full"] if i % 2 == 0 else ["full", "lean"]  # ABBA: no side always goes first
            for variant in order:
                spliced, plain = relays[variant]
                mbps, cpu = throughput.via_relay(size, spliced)
                add(variant, "spliced MB/s", mbps)
                add(variant, "spliced CPU", cpu)
                mbps, cpu = throughput.via_relay(size, plain)
                add(variant, "ordinary MB/s", mbps)
                add(variant, "ordinary CPU", cpu)
                pooled[variant] += latency.via_relay(rounds, rounds // 10, spliced)
                add(variant, "handshakes", handshakes.measure_on(spliced, Security(), hs_seconds)["per_cpu_second"])
    for variant, lat in pooled.items():
        add(variant, "p50", latency.percentile(lat, 50))
        add(variant, "p99", latency.percentile(lat, 99))
    with scraped(ports[:1]):
        for i in range(idle_runs):
            for variant in ("lean", "full") if i % 2 == 0 else ("full", "lean"):
                args = full_args[0] if variant == "full" else ()
                d = idle.measure(idle_sessions, args=args, lean=variant == "lean")
                per = d["kib_per_session"]
                add(variant, "idle", None if per is None else per * 1024)

    measures = [  # key, label, digits, higher is better
        ("spliced MB/s", "one-to-one MB/s, spliced", 0, True),
        ("spliced CPU", "one-to-one relay CPU s/GiB, spliced", 3, False),
        ("ordinary MB/s", "one-to-one MB/s, --no-splice", 0, True),
        ("ordinary CPU", "one-to-one relay CPU s/GiB, --no-splice", 3, False),
        ("p50", "latency p50, µs", 0, False),
        ("p99", "latency p99, µs", 0, False),
        ("handshakes", "plain handshakes per relay CPU second", 0, True),
        ("idle", f"bytes per idle session at {idle_sessions:,}", 0, False),
    ]
    rows = []
    data: dict[str, dict[str, float | None]] = {}
    for key, label, digits, higher in measures:
        lo, fu = samples["lean"].get(key), samples["full"].get(key)
        if not lo or not fu:
            continue
        a, b = median(lo), median(fu)
        if a <= 0:  # too short to measure (a smoke run's CPU time is whole clock ticks)
            rows.append([label, fmt(a, digits), fmt(b, digits), "", "n/a"])
            continue
        # Paired: lean and full ran back to back in each run; the median of those
        # ratios, so that the machine's drift between runs cancels.
        pairs = [(x, y) for x, y in zip(lo, fu, strict=True) if x > 0] if len(lo) == len(fu) else []
        ratio = median(y / x for x, y in pairs) if pairs else b / a
        cost = (1 - ratio) if higher else (ratio - 1)
        data[key] = {"lean": a, "full": b, "cost": cost}
        verdict = "met" if cost <= TARGET else "**not met**"
        rows.append([label, fmt(a, digits), fmt(b, digits), f"{cost * 100:+.1f}%", verdict])
    return Table(
        "8. What the features cost (timeouts, limits, metrics)",
        ["measure", "lean", "full", "cost", "<= 10%"],
        rows,
        [
            f"{runs} runs alternating (ABBA), {size >> 20} MiB per throughput run, {rounds:,} round trips and "
            f"{hs_seconds:g} s of handshakes per run; idle memory {idle_runs} times each, alternating. Lean and "
            "full: medians; cost: the full/lean ratio within each run, then its median (latency: over the pooled "
            "round trips). A negative cost is noise in the full relay's favour.",
            "lean: benchmarks/lean.py (timeouts and limits stubbed out, no metrics); full: the relay as shipped, "
            "metrics scraped every second.",
        ],
        data,
    )
