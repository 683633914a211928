"""The benchmark suite, at tiny sizes, so that its code cannot rot.

It measures nothing worth reading: figures are never asserted. It checks that
every scenario runs against real processes and that the report and charts are
written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_scenario_runs_and_writes_the_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = (tmp_path / "performance.md").read_text()
    for title in ("1. One-to-one", "2. Fan-out", "3. Latency", "4. Idle", "5. Handshakes", "6. 8 concurrent pairs",
                  "10. Visitors through one bridge", "11. WebSocket ends"):  # fmt: skip
        assert title in report, report
    assert "relay, tls" in report and "sealed" in report
    for chart in ("throughput.png", "latency.png"):
        assert (tmp_path / "img" / chart).stat().st_size > 1000
