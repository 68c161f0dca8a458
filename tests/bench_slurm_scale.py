"""``invoke bench --scale --slurm``: what polling servers in Slurm jobs costs, beside placement ssh.

For each N in ``steps`` (48, 120), N test users each run one server, first with
placement ssh (users alternate between the nodes), then with placement slurm
(each server a step of its own job), on the same nodes, in one run. The server is
``tests/light_server.py``, as in bench_scale.py, and every measurement is
bench_scale.step()'s: poll rounds, idle CPU, memory, a storm, a Hub restart.
The poll rounds also count the RPCs slurmctld received meanwhile (``sdiag``).

To hold 120 jobs, Slurm declares 64 CPUs and 64000 MB per node for the run
(slurm_cluster.held_jobs); each job asks for 1 CPU and 64 MB.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import bench
import bench_scale
import cluster as cluster_mod
import slurm_cluster
from bench_scale import Settings

SLURM_CONFIG = """
c.RemoteSingularitySpawner.placement = "slurm"
c.RemoteSingularitySpawner.slurm_default_resources = {"cpus": 1, "memory": "64M", "time": "0:50:00"}
c.Spawner.start_timeout = 180
"""
DECLARED = (64, 64000)  # CPUs and MB per node while the run holds its jobs


def settings(quick: bool) -> Settings:
    return Settings(steps=(48,), poll_rounds=2, idle_s=5.0) if quick else Settings(steps=(48, 120))


def rows(ssh: dict, slurm: dict) -> list[dict]:
    """One table row per measure and N: placement slurm, placement ssh, the target, met."""

    def cpu_ms(st: dict) -> float:
        return 1000 * st["poll"]["median_cpu_s"] / st["servers"]

    table = []
    for st, sst in zip(slurm["steps"], ssh["steps"], strict=True):
        n, poll, spoll = st["servers"], st["poll"], sst["poll"]
        rounds = len(poll["rounds"])
        rpcs, ssh_rpcs = poll["controller_rpcs"] / rounds, spoll["controller_rpcs"] / rounds
        storm, sstorm, rs, srs = st["storm"], sst["storm"], st["restart"], sst["restart"]
        table += [
            {
                "n": n,
                "measure": "poll round: Hub CPU per server (ms)",
                "slurm": f"{cpu_ms(st):.2f}",
                "ssh": f"{cpu_ms(sst):.2f}",
                "target": f"<= 1.5 x ssh = {1.5 * cpu_ms(sst):.2f}",
                "met": cpu_ms(st) <= 1.5 * cpu_ms(sst),
            },
            {
                "n": n,
                "measure": "poll round: slurmctld RPCs (per server)",
                "slurm": f"{rpcs:.1f} ({rpcs / n:.3f})",
                "ssh": f"{ssh_rpcs:.1f} ({ssh_rpcs / n:.3f})",
                "target": "<= 0.1 per server",
                "met": rpcs / n <= 0.1,
            },
            {
                "n": n,
                "measure": "poll round: wall, median (s); SSH logins in the rounds",
                "slurm": f"{poll['median_wall_s']:.2f} (max {poll['max_wall_s']:.2f}); "
                f"{poll['sshd_logins']}",
                "ssh": f"{spoll['median_wall_s']:.2f} (max {spoll['max_wall_s']:.2f}); "
                f"{spoll['sshd_logins']}",
                "target": "",
                "met": None,
            },
            {
                "n": n,
                "measure": "Hub CPU while idle (% of a core)",
                "slurm": f"{100 * st['idle_cpu_per_s']:.1f}",
                "ssh": f"{100 * sst['idle_cpu_per_s']:.1f}",
                "target": "",
                "met": None,
            },
            {
                "n": n,
                "measure": f"storm of {storm['spawns']}: ready in (s); API p99 (ms)",
                "slurm": f"{storm['ready']}/{storm['spawns']} in {storm['wall_s']:.1f}; "
                f"{storm['api_p99_ms']:.0f}",
                "ssh": f"{sstorm['ready']}/{sstorm['spawns']} in {sstorm['wall_s']:.1f}; "
                f"{sstorm['api_p99_ms']:.0f}",
                "target": "all ready",
                "met": storm["ready"] == storm["spawns"],
            },
            {
                "n": n,
                "measure": "Hub restart: API answers / all checked (s); ready after",
                "slurm": f"{rs['api_s']:.2f} / {rs['checked_s']:.2f}; {rs['ready_after']}/{n}",
                "ssh": f"{srs['api_s']:.2f} / {srs['checked_s']:.2f}; {srs['ready_after']}/{n}",
                "target": "all ready",
                "met": rs["ready_after"] == n,
            },
        ]
    return table


def table(table_rows: list[dict]) -> str:
    mark = {True: "yes", False: "**no**", None: ""}
    lines = ["| N | measure | placement slurm | placement ssh | target | met |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['n']} | {r['measure']} | {r['slurm']} | {r['ssh']} | {r['target']} | {mark[r['met']]} |"
        for r in table_rows
    ]
    return "\n".join(lines)


def run(s: Settings, json_path: Path, command: str) -> dict:
    """The whole run on the test cluster and its Slurm (holding both); returns the results."""
    import jupyterhub  # noqa: PLC0415

    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[bench --scale --slurm {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    names = bench_scale.user_names(max(s.steps))
    with cluster_mod.exclusive(lambda: say("waiting for another run to release the test cluster")):
        say("bringing up the test cluster and its Slurm")
        c = cluster_mod.up()
        info = bench.machine()
        with slurm_cluster.held_jobs(*DECLARED):
            say(f"creating {len(names)} test users")
            cluster_mod.add_users(names)
            workdir = Path(tempfile.mkdtemp(prefix="rss-bench-slurm-"))
            light = bench_scale.install_light_server(c)
            extra = bench_scale.SCALE_CONFIG.format(server=light, version=jupyterhub.__version__)
            try:
                say("placement ssh")
                ssh_say = lambda m: say(f"ssh: {m}")  # noqa: E731
                ssh = bench_scale.run_side(c, s, workdir / "ssh", 600, extra, True, ssh_say)
                say("placement slurm")
                slurm = bench_scale.run_side(
                    c, s, workdir / "slurm", 700, extra + SLURM_CONFIG, True, lambda m: say(f"slurm: {m}"),
                    choose_node=False,
                )  # fmt: skip
            finally:
                say(f"removing the {len(names)} test users")
                cluster_mod.remove_users(names)
                json_path.parent.mkdir(parents=True, exist_ok=True)
                for side in ("ssh", "slurm"):
                    with contextlib.suppress(OSError):
                        kept = json_path.with_suffix(f".{side}-hub.log")
                        shutil.copyfile(workdir / side / "jupyterhub.log", kept)
                shutil.rmtree(workdir, ignore_errors=True)
    table_rows = rows(ssh, slurm)
    declared = {"declared_per_node": {"cpus": DECLARED[0], "memory_mb": DECLARED[1]}}
    sides = {"ssh": ssh, "slurm": slurm}
    text = table(table_rows)
    return bench_scale.report(json_path, command, info, s, sides, table_rows, text, started, **declared)
