"""Scenario 12, what rate caps and quotas cost, and how closely a cap holds.

Three relays side by side, alternating:

* uncapped: the relay as shipped, no cap or quota set (a session holds no meter);
* metered: a rate cap and quotas so high that they never bind
  (``--rate-per-session 100G --rate-per-ip 100G --quota-per-chid 1000G
  --quota-per-ip 1000G``): every read pays the whole bookkeeping, nobody waits;
* capped: ``--rate-per-session`` at ``CAP``: the measured MB/s against the cap.

One-to-one streams on the spliced and the ordinary (``--no-splice``) path, and
64-byte round trips (the ordinary path). The metered/uncapped ratio is taken
within each run, then its median.
"""

from __future__ import annotations

from . import latency, throughput
from .common import Relay, Table, fmt, median

CAP = 200_000_000
"""Bytes per second of the capped relay: below what every path here reaches uncapped."""
NEVER = ("--rate-per-session", "100G", "--rate-per-ip", "100G", "--quota-per-chid", "1000G", "--quota-per-ip", "1000G")


def run(runs: int = 4, size: int = 256 << 20, rounds: int = 4000) -> Table:
    samples: dict[str, dict[str, list[float]]] = {"uncapped": {}, "metered": {}, "capped": {}}

    def add(variant: str, what: str, value: float) -> None:
        samples[variant].setdefault(what, []).append(value)

    cap = ("--rate-per-session", str(CAP))
    pooled: dict[str, list[float]] = {"uncapped": [], "metered": []}
    with (
        Relay() as uncapped,
        Relay("--no-splice") as uncapped_plain,
        Relay(*NEVER) as metered,
        Relay("--no-splice", *NEVER) as metered_plain,
        Relay(*cap) as capped,
        Relay("--no-splice", *cap) as capped_plain,
    ):
        relays = {
            "uncapped": (uncapped, uncapped_plain),
            "metered": (metered, metered_plain),
            "capped": (capped, capped_plain),
        }
        for i in range(runs):
            order = list(relays)[i % 3 :] + list(relays)[: i % 3]  # each goes first in turn
            for variant in order:
                spliced, plain = relays[variant]
                mbps, cpu = throughput.via_relay(size, spliced)
                add(variant, "spliced MB/s", mbps)
                add(variant, "spliced CPU", cpu)
                mbps, cpu = throughput.via_relay(size, plain)
                add(variant, "ordinary MB/s", mbps)
                add(variant, "ordinary CPU", cpu)
                if variant in pooled:
                    pooled[variant] += latency.via_relay(rounds, rounds // 10, plain)
    for variant, lat in pooled.items():
        add(variant, "p50", latency.percentile(lat, 50))
        add(variant, "p99", latency.percentile(lat, 99))

    def paired(variant: str, key: str) -> float | None:
        a, b = samples["uncapped"].get(key), samples[variant].get(key)
        if not a or not b or len(a) != len(b):
            return None
        ratios = [y / x for x, y in zip(a, b, strict=True) if x > 0]
        return median(ratios) if ratios else None

    measures = [
        ("spliced MB/s", "one-to-one MB/s, spliced", 0),
        ("spliced CPU", "one-to-one relay CPU s/GiB, spliced", 3),
        ("ordinary MB/s", "one-to-one MB/s, --no-splice", 0),
        ("ordinary CPU", "one-to-one relay CPU s/GiB, --no-splice", 3),
        ("p50", "latency p50, µs (--no-splice)", 0),
        ("p99", "latency p99, µs (--no-splice)", 0),
    ]
    rows = []
    data: dict[str, dict[str, float | None]] = {}
    for key, label, digits in measures:
        un, me = samples["uncapped"].get(key), samples["metered"].get(key)
        if not un or not me:
            continue
        ratio = paired("metered", key)
        data[key] = {"uncapped": median(un), "metered": median(me), "metered_vs_uncapped": ratio}
        rows.append([label, fmt(median(un), digits), fmt(median(me), digits), fmt(ratio, 3)])
    for key, label in (("spliced MB/s", "spliced"), ("ordinary MB/s", "--no-splice")):
        got = samples["capped"].get(key)
        if got:
            accuracy = median(got) * 1e6 / CAP
            data[f"capped {label}"] = {"mbps": median(got), "vs_cap": accuracy}
            rows.append([f"capped at {CAP / 1e6:.0f} MB/s, {label}: MB/s and / cap", fmt(median(got), 0), "",
                         fmt(accuracy, 3)])  # fmt: skip
    return Table(
        "12. Caps and quotas: their cost, and a cap's accuracy",
        ["measure", "uncapped", "metered (never binds)", "metered / uncapped"],
        rows,
        [
            f"{runs} runs, each relay first in turn, {size >> 20} MiB per stream, {rounds:,} round trips per run "
            "(pooled). metered: caps and quotas set too high to bind, so every read pays the bookkeeping. "
            "The last rows: a relay with --rate-per-session at the cap; the ratio is the measured rate over the cap "
            "(the stream's first burst included).",
        ],
        data,
    )
