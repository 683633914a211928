"""A/B of the hot path: the relay of another git revision against the working tree's, in one run.

    python -m benchmarks.ab HEAD~1              # before this change / after it
    python -m benchmarks.ab v1 --runs 8 --size 1G

Both relays run side by side, the paths alternating and each revision first
in turn; the figures are medians and the ratio is after/before within each run,
then its median (docs/performance.md, "What was tried"). The other revision is
checked out with ``git worktree`` into a scratch directory and removed after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import tempfile
from pathlib import Path

from . import handshakes, latency, throughput
from .common import ROOT, Relay, Security, fmt, median

MEASURES = [
    ("spliced MB/s", 0),
    ("spliced CPU s/GiB", 3),
    ("--no-splice MB/s", 0),
    ("--no-splice CPU s/GiB", 3),
    ("latency p50 µs", 1),
    ("latency p99 µs", 1),
    ("plain handshakes per CPU second", 0),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the revision to compare the working tree with (before)")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--size", type=int, default=512 << 20, help="bytes per stream")
    ap.add_argument("--rounds", type=int, default=5000, help="round trips per latency run")
    ap.add_argument("--hs-seconds", type=float, default=2.0, help="seconds of plain handshakes per run")
    ap.add_argument(
        "--spliced-only", action="store_true", help="only the spliced one-to-one stream (splice experiments)"
    )
    args = ap.parse_args(argv)
    mp.set_start_method("forkserver")
    with tempfile.TemporaryDirectory(prefix="forwarding-ab-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            rows = compare(tree / "src", args.runs, args.size, args.rounds, args.hs_seconds, args.spliced_only)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    print(f"| measure | {args.rev} | working tree | after / before |\n|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def compare(
    before_src: Path, runs: int, size: int, rounds: int, hs_seconds: float, spliced_only: bool = False
) -> list[list[str]]:
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    pooled: dict[str, list[float]] = {"before": [], "after": []}
    with (
        Relay(src=before_src) as b_spliced,
        Relay("--no-splice", src=before_src) as b_plain,
        Relay() as a_spliced,
        Relay("--no-splice") as a_plain,
    ):
        relays = {"before": (b_spliced, b_plain), "after": (a_spliced, a_plain)}
        for i in range(runs):
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                spliced, plain = relays[side]
                got = samples[side]
                for name, relay in (("spliced", spliced), ("--no-splice", plain)):
                    mbps, cpu = throughput.via_relay(size, relay)
                    got.setdefault(f"{name} MB/s", []).append(mbps)
                    got.setdefault(f"{name} CPU s/GiB", []).append(cpu)
                    if spliced_only:
                        break
                if spliced_only:
                    continue
                pooled[side] += latency.via_relay(rounds, rounds // 10, plain)
                rate = handshakes.measure_on(spliced, Security(), hs_seconds)["per_cpu_second"]
                got.setdefault("plain handshakes per CPU second", []).append(rate or 0.0)
    for side, lat in pooled.items() if not spliced_only else ():
        samples[side]["latency p50 µs"] = [latency.percentile(lat, 50)]
        samples[side]["latency p99 µs"] = [latency.percentile(lat, 99)]
    rows = []
    for key, digits in MEASURES:
        if key not in samples["after"]:
            continue
        b, a = samples["before"][key], samples["after"][key]
        ratio = median(y / x for x, y in zip(b, a, strict=True) if x > 0)
        rows.append([key, fmt(median(b), digits), fmt(median(a), digits), fmt(ratio, 3)])
    return rows


if __name__ == "__main__":
    sys.exit(main())
