"""`invoke bench --quick` and `invoke bench --scale --quick` run end to end and report every
measurement.

No timing is asserted here (figures depend on the machine): only that each
row is there, measured on the servers it claims, with plausible values.
"""

from __future__ import annotations

import json
import math
import pwd
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(out: Path, *options: str) -> tuple[dict, str]:
    """`invoke bench OPTIONS --json OUT`: its results and what it printed."""
    # The cluster fixture holds the cluster; the bench, its child, runs under that hold.
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", *options, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_bench_reports_every_row(cluster, tmp_path):
    results, printed = run_bench(tmp_path / "bench.json", "--quick")
    settings = results["settings"]
    n = settings["servers"]

    measures = [row["measure"] for row in results["table"]]
    for words in ("spawn latency, median", "spawn latency, p95", "poll round", "Hub restart", "storm of",
                  "GET /hub/api/", "Hub memory", "spawn latency with certificates",
                  "certificate per login", "spawn latency with placement slurm",
                  "image's JupyterHub checked"):  # fmt: skip
        assert any(words in m for m in measures), (words, measures)
        assert words in printed  # the printed table
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
    for side in ("checked", "unchecked"):
        times = results["image_check"][side]["spawn_s"]
        assert len(times) == 2 * settings["spawns"] and all(0 < t < 180 for t in times)


def test_quick_scale_bench_reports_every_row_for_48_users(cluster, tmp_path):
    """`invoke bench --scale --quick`, what CI keeps working: 48 users, one server each, both spawners."""
    results, printed = run_bench(tmp_path / "scale.json", "--scale", "--quick")
    assert results["settings"]["steps"] == [48] and results["command"] == "invoke bench --scale --quick"
    measures = {row["measure"] for row in results["table"]}
    for words in ("poll round: wall", "poll round: Hub CPU per server", "SSH logins / channels",
                  "Hub memory per server", "Hub threads", "Hub CPU while idle", "sshd processes per node",
                  "storm of 48", "Hub restart"):  # fmt: skip
        assert any(words in m for m in measures), (words, measures)
        assert words in printed  # the printed table
    assert all(row["n"] == 48 for row in results["table"])

    for side in ("ours", "local"):
        (step,) = results[side]["steps"]
        assert step["servers"] == 48
        # Every poll of every round answered "running".
        assert all(r["servers"] == r["running"] == 48 for r in step["poll"]["rounds"]), step["poll"]
        assert step["storm"]["ready"] == step["storm"]["spawns"] == 48, step["storm"]["errors"]
        assert step["restart"]["ready_after"] == 48
        assert step["rss_bytes"] > results[side]["before"]["rss_bytes"] > 0
    ours = results["ours"]["steps"][0]
    # One kept connection per user: a poll round opens a channel per server and no connection.
    assert ours["poll"]["ssh_channels_opened"] == 48 * len(ours["poll"]["rounds"])
    assert ours["poll"]["ssh_connections_opened"] == ours["poll"]["sshd_logins"] == 0
    # Both nodes hold the users' sessions: their sshd grew by more than one process per user.
    before = results["ours"]["sshd_before"]
    assert sum(ours["sshd_processes"].values()) - sum(before.values()) >= 48
    # The users are gone again.
    assert not [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("rss-scale-")]
