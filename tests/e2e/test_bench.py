"""`invoke bench --quick` runs end to end and reports every measurement.

No timing is asserted here (figures depend on the machine): only that each
row is there, measured on the servers it claims, with plausible values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_reports_every_row(cluster, tmp_path):
    out = tmp_path / "bench.json"
    # The fixture holds the cluster; the bench, its child, runs under that hold.
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    settings = results["settings"]
    n = settings["servers"]

    measures = [row["measure"] for row in results["table"]]
    for words in ("spawn latency, median", "spawn latency, p95", "poll round", "Hub restart", "storm of",
                  "GET /hub/api/", "Hub memory", "spawn latency with certificates",
                  "certificate per login", "spawn latency with placement slurm"):  # fmt: skip
        assert any(words in m for m in measures), (words, measures)
        assert words in proc.stdout  # the printed table
    assert all(row["ours"] and row["reference"] for row in results["table"])

    ours, local = results["ours"], results["local"]
    for side in (ours, local):
        assert len(side["latency"]["spawn_s"]) == settings["spawns"]
        assert all(0 < t < 180 for t in side["latency"]["spawn_s"])
        storm = side["storm"]
        assert storm["ready"] == storm["spawns"] == settings["storm"], storm["errors"]
        assert storm["api_samples"] > 0 and math.isfinite(storm["api_max_ms"])
    # The poll round polled every running server, and each answered "running".
    assert all(r["servers"] == r["running"] == n for r in ours["poll"]["rounds"])
    assert all(r["cpu_s"] > 0 for r in ours["poll"]["rounds"])
    assert ours["running_after_restart"] == n
    assert ours["restart_n_s"] > 0 and ours["restart_empty_s"] > 0
    assert ours["rss_n_bytes"] > 0 and ours["rss_none_bytes"] > 0
    assert results["machine"]["cores"] >= 1 and results["command"] == "invoke bench --quick"
    certs = results["certificates"]
    assert len(certs["latency"]["spawn_s"]) == settings["spawns"]
    assert all(0 < t < 180 for t in certs["latency"]["spawn_s"])
    assert len(certs["signing"]["login_key_s"]) == 200 and certs["signing"]["median_ms"] > 0
    slurm = results["slurm"]
    assert len(slurm["latency"]["spawn_s"]) == settings["spawns"]
    assert all(0 < t < 180 for t in slurm["latency"]["spawn_s"])
