"""``make bench``: every scenario, side by side with its peers, into docs/performance.md.

    python -m benchmarks.run                  # the full suite (a few minutes)
    python -m benchmarks.run --smoke --out D  # tiny sizes, report in D (what `make test` runs)
    python -m benchmarks.run --only latency   # one scenario

The generated tables replace what is between the ``bench:begin`` and
``bench:end`` markers of the report; charts go to ``img/`` next to it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import (
    bridge,
    caps,
    cluster,
    fanout,
    features,
    handshakes,
    hostile,
    idle,
    latency,
    pairs,
    throughput,
    tls,
    websocket,
)
from .common import Table, fmt, have_haproxy, have_socat, scratch_dir, securities

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def scenarios(smoke: bool, tmp: Path) -> dict[str, Callable[[], Table]]:
    sec = securities(tmp)
    if smoke:
        return {
            "throughput": lambda: throughput.run(size=4 << 20, runs=1),
            "fanout": lambda: fanout.run(fan=(2,), delivered=4 << 20, runs=1),
            "latency": lambda: latency.run(rounds=50, warmup=5, runs=1),
            "idle": lambda: idle.run(counts=(200,)),
            "handshakes": lambda: handshakes.run(sec, seconds=0.3),
            "pairs": lambda: pairs.run(sec, pairs=8, size=256 << 10, runs=1),
            "features": lambda: features.run(
                runs=1, size=4 << 20, rounds=50, hs_seconds=0.3, idle_sessions=50, idle_runs=1
            ),
            "hostile": lambda: hostile.run(rounds=50, warmup=5, runs=1),
            "bridge": lambda: bridge.run(visitors=(1, 4), total=4 << 20, runs=1),
            "websocket": lambda: websocket.run(size=4 << 20, runs=1, rounds=50),
            "caps": lambda: caps.run(runs=1, size=4 << 20, rounds=50),
            "tls": lambda: tls.run(sec[2], size=4 << 20, runs=1),
            "cluster": lambda: cluster.run(
                size=4 << 20, runs=1, hs_seconds=0.3, pairs=8, pair_size=256 << 10, idle_count=300
            ),
        }
    return {
        "throughput": lambda: throughput.run(runs=5),
        "fanout": lambda: fanout.run(),
        "latency": lambda: latency.run(),
        "idle": lambda: idle.run(),
        "handshakes": lambda: handshakes.run(sec),
        "pairs": lambda: pairs.run(sec, runs=5),
        "features": lambda: features.run(),
        "hostile": lambda: hostile.run(),
        "bridge": lambda: bridge.run(),
        "websocket": lambda: websocket.run(),
        "caps": lambda: caps.run(),
        "tls": lambda: tls.run(sec[2]),
        "cluster": lambda: cluster.run(),
    }


def charts(tables: dict[str, Table], img: Path) -> list[str]:
    """Bar charts of throughput and latency; returns the Markdown that shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    shown = []
    if "throughput" in tables:
        data = tables["throughput"].data
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        names = list(data)
        ax1.barh(names, [data[n]["mbps"] or 0 for n in names], color="#4c72b0")
        ax1.set_xlabel("MB/s (higher is better)")
        ax1.invert_yaxis()
        relays = [n for n in names if data[n]["cpu_per_gib"] is not None]
        ax2.barh(relays, [data[n]["cpu_per_gib"] or 0 for n in relays], color="#dd8452")
        ax2.set_xlabel("relay CPU seconds per GiB (lower is better)")
        ax2.invert_yaxis()
        fig.suptitle("One-to-one throughput (medians)")
        fig.tight_layout()
        fig.savefig(img / "throughput.png", dpi=100)
        plt.close(fig)
        shown.append("![one-to-one throughput](img/throughput.png)")
    if "latency" in tables:
        data = tables["latency"].data
        fig, ax = plt.subplots(figsize=(10, 3.6))
        names = list(data)
        width = 0.27
        for k, p in enumerate(("p50", "p99", "p99.9")):
            xs = [i + (k - 1) * width for i in range(len(names))]
            ax.bar(xs, [data[n][p] or 0 for n in names], width, label=p)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("round trip, µs (lower is better)")
        ax.set_title("64-byte ping-pong")
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / "latency.png", dpi=100)
        plt.close(fig)
        shown.append("![latency](img/latency.png)")
    return shown


def targets(tables: dict[str, Table]) -> Table | None:
    """The targets of docs/performance.md, checked against this run's figures."""
    rows: list[list[str]] = []

    def check(what: str, target: str, value: float | None, ok: bool | None, digits: int = 2) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        rows.append([what, target, fmt(value, digits), verdict])

    def strongest(d: dict[str, float | None], metric: str, higher_is_better: bool = False) -> tuple[str, float] | None:
        """The relay's ratio against the stronger of socat and haproxy for ``metric`` (the worse ratio for it)."""
        got = [(peer, v) for peer in ("socat", "haproxy") if (v := d.get(metric.format(peer=peer))) is not None]
        if not got:
            return None
        return min(got, key=lambda pv: pv[1]) if higher_is_better else max(got, key=lambda pv: pv[1])

    tp = tables.get("throughput")
    if tp:
        relay = tp.data["relay"]
        mb_peer = strongest(relay, "vs_{peer}", higher_is_better=True)
        cpu_peer = strongest(relay, "cpu_vs_{peer}")
        if mb_peer:
            name, v = mb_peer
            check(f"one-to-one MB/s, relay / {name} (the stronger peer)", ">= 1.3", v, v >= 1.3)
        if cpu_peer:
            name, v = cpu_peer
            check(f"one-to-one CPU per GiB, relay / {name}", "<= 0.5", v, v <= 0.5)
    socat = tp.data.get("socat -b 262144") if tp else None
    fo = tables.get("fanout")
    if fo:
        for name, d in fo.data.items():
            ratio = d["vs_direct"] or 0.0
            check(f"fan-out {name} MB/s, relay / direct", ">= 1.0", ratio, ratio >= 1.0)
            if socat:
                cpu = (d["relay_cpu_per_gib"] or 0) / (socat["cpu_per_gib"] or 1)
                check(f"fan-out {name} CPU per delivered GiB / socat's per GiB", "<= 1.0", cpu, cpu <= 1.0)
    lat = tables.get("latency")
    if lat:
        for p in ("p50", "p99"):
            lat_peer = strongest(lat.data["relay"], f"{p}_vs_{{peer}}")
            if lat_peer:
                name, v = lat_peer
                check(f"latency {p}, relay / {name} (the stronger peer)", "<= 1.0", v, v <= 1.0)
    idle_t = tables.get("idle")
    if idle_t:
        for n, d in idle_t.data.items():
            per = d["kib_per_session"]
            check(
                f"bytes per idle session at {int(n):,}",
                "<= 2048",
                None if per is None else per * 1024,
                None if per is None else per * 1024 <= 2048,
                0,
            )
    hs = tables.get("handshakes")
    if hs and "plain" in hs.data:
        rate = hs.data["plain"]["per_cpu_second"]
        check("plain handshakes per relay CPU second", ">= 5000", rate, rate is not None and rate >= 5000, 0)
        hs_vs = hs.data["plain"].get("cpu_vs_haproxy")
        if hs_vs is not None:
            check("relay CPU per plain handshake / haproxy's per session", "<= 1.0", hs_vs, hs_vs <= 1.0)
    pr = tables.get("pairs")
    if pr and "haproxy" in pr.data and "relay plain" in pr.data:
        ha, mine = pr.data["haproxy"]["mbps"], pr.data["relay plain"]["mbps"]
        pairs_vs = mine / ha if ha and mine else None
        check("200 pairs total MB/s, relay plain / haproxy", ">= 1.0", pairs_vs,
              None if pairs_vs is None else pairs_vs >= 1.0)  # fmt: skip
    ft = tables.get("features")
    if ft and ft.data:
        worst = max(ft.data.items(), key=lambda kv: kv[1]["cost"] or 0.0)
        cost = worst[1]["cost"] or 0.0
        check(f"feature cost, worst measure of scenario 8 ({worst[0]})", "<= 10%", cost * 100, cost <= 0.10, 1)
    ho = tables.get("hostile")
    if ho:
        ratio = ho.data["with the neighbours"]["p99_vs_quiet"] or 0.0
        check("latency p99 with hostile neighbours / quiet relay", "<= 2.0", ratio, ratio <= 2.0)
    wst = tables.get("websocket")
    if wst:
        for path in ("websocket -> tcp", "tcp -> websocket"):
            ratio = wst.data[path]["vs_ordinary"] or 0.0
            check(f"{path} MB/s / tcp -> tcp on the ordinary path", ">= 0.5", ratio, ratio >= 0.5)
    tt = tables.get("tls")
    if tt:
        before = tt.data["relay TLS --no-malloc-tuning"]["vs_tls_cpu"]
        tuned = 1 / before if before else None
        check("TLS CPU per GiB, as shipped / --no-malloc-tuning (before)", "<= 0.6", tuned,
              None if tuned is None else tuned <= 0.6)  # fmt: skip
    cp = tables.get("caps")
    if cp:
        for key in ("capped spliced", "capped --no-splice"):
            acc = cp.data.get(key, {}).get("vs_cap")
            check(f"{key} MB/s / the cap", "0.9 - 1.1", acc, None if acc is None else 0.9 <= acc <= 1.1)
    cl = tables.get("cluster")
    if cl:
        t = cl.data["targets"]
        for what, key, bound, at_least in (
            ("cross-node 1:1 MB/s / one node's", "across_mb", 0.75, True),
            ("cross-node 1:1 CPU per GiB / one node's", "across_cpu", 2.2, False),
            ("plain handshakes per second, --workers 2 / 1", "workers_hs", 1.6, True),
            ("200 pairs MB/s, --workers 2 / 1", "workers_pairs", 1.4, True),
            ("KiB per idle session, --workers 6 (registry included)", "idle_kib", 2.5, False),
        ):
            value = t.get(key)
            met = None if value is None or value != value else (value >= bound if at_least else value <= bound)
            check(what, f"{'>=' if at_least else '<='} {bound:g}", value, met)
        if t.get("shared_nothing_hs") is not None:  # the peer that puts the handshake target in context
            bound_ratio = t["shared_nothing_hs"]
            check("the same, two processes sharing nothing (this machine's bound)", "peer", bound_ratio, None)
        if t.get("workers_pairs_no_handoff") is not None:
            check("200 pairs, --workers 2 --no-handoff / --workers 1 (legs only)", "peer",
                  t["workers_pairs_no_handoff"], None)  # fmt: skip
        if t.get("handoff_cpu") is not None:
            check("200 pairs, relay CPU per GiB, --workers 2 / --no-handoff (what the hand-off saves)", "peer",
                  t["handoff_cpu"], None)  # fmt: skip
    if not rows:
        return None
    return Table("Targets, checked against this run", ["what", "target", "this run", ""], rows, [], {})


def _wmem_max() -> str:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return f"{int(f.read()):,}"
    except (OSError, ValueError):
        return "unknown"


def report(tables: dict[str, Table], shown: list[str], seconds: float) -> str:
    head = [
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"socat {'present' if have_socat() else 'missing'}, haproxy {'present' if have_haproxy() else 'missing'}, "
        f"net.core.wmem_max {_wmem_max()} "
        f"(the spliced receivers' send buffer, docs/operations.md); {seconds:.0f} s in all.",
        "",
    ]
    checked = targets(tables)
    body = ([checked.markdown()] if checked else []) + [t.markdown() for t in tables.values()]
    return "\n".join([*head, *shown, "", *body])


def write(report_text: str, path: Path) -> None:
    if path.exists() and BEGIN in (old := path.read_text()):
        before, rest = old.split(BEGIN, 1)
        after = rest.split(END, 1)[1] if END in rest else ""
        path.write_text(f"{before}{BEGIN}\n{report_text}\n{END}{after}")
    else:
        path.write_text(f"# Benchmark results\n\n{BEGIN}\n{report_text}\n{END}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the code runs, measures nothing")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="directory of performance.md and img/")
    ap.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    args = ap.parse_args(argv)
    # Children must not inherit the sockets this process holds: a copy would keep
    # a connection open after we close it.
    mp.set_start_method("forkserver")
    tmp = scratch_dir()
    todo = scenarios(args.smoke, tmp)
    tables: dict[str, Table] = {}
    t0 = time.monotonic()
    for name, scenario in todo.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        tables[name] = scenario()
        print(tables[name].markdown(), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = charts(tables, args.out / "img")
    write(report(tables, shown, time.monotonic() - t0), args.out / "performance.md")
    (args.out / "img" / "bench.json").write_text(json.dumps({k: t.data for k, t in tables.items()}, indent=1))
    print(f"wrote {args.out / 'performance.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
