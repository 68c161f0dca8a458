"""The scale benchmark behind ``invoke bench --scale``: how the Hub's costs grow with servers.

For each N in ``steps`` (48, 120, 240), N test users each run one server,
spread over both nodes, and the same is done side by side with
LocalProcessSpawner on the hub host, as the same users, with the same server
command. That server is ``tests/light_server.py``: it answers the Hub's checks
under its prefix and holds a few MiB, so memory and CPU measure the Hub, not
Jupyter. The Hub keeps JupyterHub's defaults (poll_interval 30 s,
init_spawners_timeout 10 s) and the spawner its own (ssh_threads,
ssh_idle_timeout).

Measured at each N, for both spawners:

- a poll round: every server's ``poll()`` at once, as the Hub's periodic check
  does (tests/bench_hub.py): wall time, Hub CPU, SSH connections and channels
  opened by the spawner, logins in the nodes' sshd logs;
- the Hub's resident memory and threads with N servers, against the same Hub
  before its first spawn; its CPU while idle for ``idle_s`` seconds (the
  periodic polls and the kept connections);
- sshd processes on each node;
- a storm: min(N, 48) of the servers stopped, then spawned again all at once,
  while ``GET /hub/api/`` is timed every 50 ms;
- a Hub restart with the N servers kept: seconds until the API answers, until
  the Hub has checked every server (its log), and how many are ready after.

The servers are added step by step (48, then 72 more, ...), so the whole run
spawns each user's server once per spawner plus the storms.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import bench
import cluster as cluster_mod
from bench import MIB, Server, in_parallel, spawn_until_ready, timed_restart
from harness import Hub

USER_PREFIX = "rss-scale-"
LIGHT_SERVER = Path(__file__).resolve().parent / "light_server.py"
STORM_MAX = 48
INIT_DONE = re.compile(r"Initialized (\d+) spawners in ([0-9.]+) seconds")

SCALE_CONFIG = """
c.Spawner.cmd = ["/usr/bin/python3", "-I", "-S", {server!r}]
c.Spawner.environment = {{"RSS_LIGHT_SERVER_VERSION": {version!r}}}
c.JupyterHub.api_page_default_limit = 1000
c.JupyterHub.api_page_max_limit = 1000
"""


@dataclass(frozen=True)
class Settings:
    steps: tuple[int, ...] = (48, 120, 240)
    poll_rounds: int = 3
    idle_s: float = 10.0
    workers: int = 8

    @classmethod
    def quick(cls) -> Settings:
        """What CI runs: the first step only."""
        return cls(steps=(48,), poll_rounds=2, idle_s=5.0)


def user_names(n: int) -> list[str]:
    return [f"{USER_PREFIX}{i:03d}" for i in range(1, n + 1)]


def servers(names: Sequence[str], nodes: Sequence[str]) -> list[Server]:
    """Each user's default server; with *nodes*, users alternate between them (with none, the
    spawner's defaults: LocalProcessSpawner's, or Slurm's partition and resources)."""
    return [
        Server(name, "", {"host": nodes[i % len(nodes)]} if nodes else {}) for i, name in enumerate(names)
    ]


_RPC_COUNT = re.compile(r"^\s+[A-Z_]+\s+\(\s*\d+\)\s+count:(\d+)", re.MULTILINE)


def controller_rpcs() -> int | None:
    """RPCs slurmctld has received so far (sdiag, by message type); None without Slurm."""
    import slurm_cluster  # noqa: PLC0415 - only where Slurm runs

    if not slurm_cluster.CONF.exists():
        return None
    out = slurm_cluster._run(["sdiag"], check=False)
    if out.returncode != 0:
        return None
    by_type = out.stdout.split("by message type", 1)[-1].split("by user", 1)[0]
    return sum(int(n) for n in _RPC_COUNT.findall(by_type))


# --------------------------------------------------------------------------- what is read


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def sshd_processes() -> dict[str, int]:
    """sshd processes on each node: its listeners and two per kept connection."""
    return {
        node.name: sum(p["comm"] == "sshd" for p in cluster_mod.node_processes(node.name))
        for node in cluster_mod.describe().nodes
    }


def ready_count(hub: Hub, names: Sequence[str]) -> int:
    r = hub.api("GET", "/users", params={"state": "ready", "limit": 1000})
    r.raise_for_status()
    wanted = set(names)
    users = [user for user in r.json() if user["name"] in wanted]
    return sum(1 for user in users for server in user.get("servers", {}).values() if server["ready"])


# --------------------------------------------------------------------------- one step


def poll_rounds(hub: Hub, rounds: int) -> dict:
    sshd_before = bench.accepted_logins()
    rpcs_before = controller_rpcs()
    results = []
    for _ in range(rounds):
        busy = machine_busy_seconds()
        r = hub.api("POST", "/bench/poll-round", timeout=300)
        r.raise_for_status()
        # The Hub's, the nodes' (sshd, the scripts) and the benchmark's own CPU, all on this machine.
        results.append({**r.json(), "machine_cpu_s": machine_busy_seconds() - busy})
    return {
        "rounds": results,
        "median_wall_s": statistics.median(r["wall_s"] for r in results),
        "max_wall_s": max(r["wall_s"] for r in results),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in results),
        "median_machine_cpu_s": statistics.median(r["machine_cpu_s"] for r in results),
        "ssh_connections_opened": sum(r["ssh_connections_opened"] for r in results),
        "ssh_channels_opened": sum(r["ssh_channels_opened"] for r in results),
        "sshd_logins": bench.accepted_logins() - sshd_before,
        # Every RPC slurmctld received during the rounds (also the nodes' own, a few a minute).
        "controller_rpcs": None if rpcs_before is None else controller_rpcs() - rpcs_before,
    }


def idle_cpu(hub: Hub, seconds: float) -> float:
    """The Hub's CPU seconds per second while nobody uses it (periodic polls, kept connections)."""
    before = cpu_seconds(hub.process.pid)
    time.sleep(seconds)
    return (cpu_seconds(hub.process.pid) - before) / seconds


def restart(hub: Hub, names: Sequence[str]) -> dict:
    """Restart the Hub with its servers kept: until the API answers, until all are checked."""
    log_start = hub.log_path.stat().st_size
    sshd_before = bench.accepted_logins()
    busy = machine_busy_seconds()
    api_s = timed_restart(hub)
    busy_api = machine_busy_seconds() - busy
    hub_cpu_api = cpu_seconds(hub.process.pid)
    started = time.perf_counter() - api_s
    deadline = time.monotonic() + 300
    while True:
        with open(hub.log_path, "rb") as log:
            log.seek(log_start)
            done = INIT_DONE.search(log.read().decode(errors="replace"))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    checked_s = time.perf_counter() - started
    return {
        "api_s": api_s,
        # CPU until the API answered: the whole machine's, and the new Hub process's.
        "machine_cpu_s": busy_api,
        "hub_cpu_s": hub_cpu_api,
        "checked_s": checked_s,
        "init_spawners_s": float(done.group(2)) if done else None,
        "ready_after": ready_count(hub, names),
        "sshd_logins": bench.accepted_logins() - sshd_before,
    }


def step(hub: Hub, names: Sequence[str], plan: Sequence[Server], s: Settings, say, remote: bool) -> dict:
    """The measurements with len(names) servers running (all of *plan* already spawned)."""
    n = len(names)
    time.sleep(2)  # the last spawns' follow-up (progress, activity) is over
    out: dict = {"servers": n, **hub.process_status()}
    out["sshd_processes"] = sshd_processes() if remote else {}
    say(f"{n}: idle Hub CPU over {s.idle_s:g} s, {s.poll_rounds} poll rounds")
    out["idle_cpu_per_s"] = idle_cpu(hub, s.idle_s)
    out["poll"] = poll_rounds(hub, s.poll_rounds)
    k = min(n, STORM_MAX)
    say(f"{n}: storm of {k}")
    in_parallel(lambda srv: hub.stop_server(srv.user, srv.name, timeout=120), plan[-k:], s.workers)
    out["storm"] = bench.storm(hub, plan[-k:])
    say(f"{n}: Hub restart with {n} servers")
    out["restart"] = restart(hub, names)
    return out


@contextlib.contextmanager
def running(hub: Hub, names: Sequence[str], workers: int) -> Iterator[Hub]:
    try:
        hub.start()
        hub.api("POST", "/users", json={"usernames": list(names)}).raise_for_status()
        yield hub
    except Exception:
        print(f"Hub log: {hub.log_path}\n{hub.log_tail()}", flush=True)
        raise
    finally:
        if hub.process is not None and hub.process.poll() is None:
            in_parallel(lambda name: hub.stop_server(name, "", timeout=180), names, 2 * workers)
        hub.stop()


def run_side(
    c, s: Settings, workdir: Path, offset: int, extra: str, remote: bool, say, choose_node: bool = True
) -> dict:
    """Every step with one spawner; the servers are added step by step. *choose_node*: spread the
    servers over the nodes (placement ssh), else let the spawner place them."""
    names = user_names(max(s.steps))
    nodes = [n.name for n in c.nodes] if remote and choose_node else []
    plan = servers(names, nodes)
    out: dict = {"steps": []}
    with running(bench.new_hub(c, workdir, offset, extra), names, s.workers) as hub:
        out["before"] = hub.process_status()
        out["sshd_before"] = sshd_processes() if remote else {}
        spawned = 0
        for n in s.steps:
            say(f"spawning servers {spawned + 1} to {n}")
            started = time.perf_counter()
            results = in_parallel(partial(spawn_until_ready, hub), plan[spawned:n], s.workers)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise RuntimeError(f"{len(failed)} of {n - spawned} spawns failed; first: {failed[0]}")
            say(f"{n - spawned} spawns in {time.perf_counter() - started:.0f} s")
            spawned = n
            out["steps"].append(step(hub, names[:n], plan[:n], s, say, remote))
    return out


# --------------------------------------------------------------------------- report


def rows(s: Settings, ours: dict, local: dict) -> list[dict]:
    """One table row per measure and N: ours, LocalProcessSpawner's, the target, met."""
    table = []
    first = ours["steps"][0]

    def per_server_mib(side: dict, st: dict) -> float:
        return (st["rss_bytes"] - side["before"]["rss_bytes"]) / st["servers"] / MIB

    def cpu_ms(st: dict) -> float:
        return 1000 * st["poll"]["median_cpu_s"] / st["servers"]

    for st, lst in zip(ours["steps"], local["steps"], strict=True):
        n = st["servers"]
        poll, lpoll = st["poll"], lst["poll"]
        mem, lmem = per_server_mib(ours, st), per_server_mib(local, lst)
        flat_mem, flat_cpu = mem / per_server_mib(ours, first), cpu_ms(st) / cpu_ms(first)
        sshd = st["sshd_processes"]
        sshd_before = ours["sshd_before"]
        storm, lstorm = st["storm"], lst["storm"]
        rs, lrs = st["restart"], lst["restart"]
        restart_limit = 2 * lrs["api_s"] + 5
        big = n == max(s.steps) and n >= 240
        table += [
            {
                "n": n,
                "measure": "poll round: wall, median (s)",
                "ours": f"{poll['median_wall_s']:.2f} (max {poll['max_wall_s']:.2f}); machine CPU "
                f"{poll['median_machine_cpu_s']:.2f} s, the Hub's {poll['median_cpu_s']:.2f}",
                "local": f"{lpoll['median_wall_s']:.3f}",
                "target": "<= 1 s at 240" if big else "",
                "met": poll["max_wall_s"] <= 1 if big else None,
            },
            {
                "n": n,
                "measure": "poll round: Hub CPU per server (ms)",
                "ours": f"{cpu_ms(st):.2f} ({flat_cpu:.2f} x at {first['servers']})",
                "local": f"{cpu_ms(lst):.2f}",
                "target": f"<= 2 ms; <= 1.2 x at {first['servers']}" if big else "<= 2 ms",
                "met": cpu_ms(st) <= 2 and (flat_cpu <= 1.2 or not big),
            },
            {
                "n": n,
                "measure": "poll rounds: SSH logins / channels opened",
                "ours": f"{poll['sshd_logins']} / {poll['ssh_channels_opened']} "
                f"in {len(poll['rounds'])} rounds",
                "local": "",
                "target": "no login",
                "met": poll["sshd_logins"] == 0 and poll["ssh_connections_opened"] == 0,
            },
            {
                "n": n,
                "measure": "Hub memory per server (MiB)",
                "ours": f"{mem:+.3f} ({flat_mem:.2f} x at {first['servers']}); "
                f"RSS {st['rss_bytes'] / MIB:.0f} from {ours['before']['rss_bytes'] / MIB:.0f}",
                "local": f"{lmem:+.3f}; RSS {lst['rss_bytes'] / MIB:.0f} from "
                f"{local['before']['rss_bytes'] / MIB:.0f}",
                "target": f"<= 1 MiB; <= 1.2 x at {first['servers']}" if big else "<= 1 MiB",
                "met": mem <= 1 and (flat_mem <= 1.2 or not big),
            },
            {
                "n": n,
                "measure": "Hub threads",
                "ours": f"{st['threads']} (from {ours['before']['threads']})",
                "local": f"{lst['threads']} (from {local['before']['threads']})",
                "target": "",
                "met": None,
            },
            {
                "n": n,
                "measure": "Hub CPU while idle (% of a core)",
                "ours": f"{100 * st['idle_cpu_per_s']:.1f}",
                "local": f"{100 * lst['idle_cpu_per_s']:.1f}",
                "target": "",
                "met": None,
            },
            {
                "n": n,
                "measure": "sshd processes per node",
                "ours": ", ".join(f"{k} {v} (from {sshd_before.get(k, 0)})" for k, v in sshd.items()),
                "local": "",
                "target": "",
                "met": None,
            },
            {
                "n": n,
                "measure": f"storm of {storm['spawns']}: ready; API p50 / p99 / max (ms)",
                "ours": f"{storm['ready']}/{storm['spawns']} in {storm['wall_s']:.1f} s; "
                f"{storm['api_p50_ms']:.0f} / {storm['api_p99_ms']:.0f} / {storm['api_max_ms']:.0f}",
                "local": f"{lstorm['ready']}/{lstorm['spawns']} in {lstorm['wall_s']:.1f} s; "
                f"{lstorm['api_p50_ms']:.0f} / {lstorm['api_p99_ms']:.0f} / {lstorm['api_max_ms']:.0f}",
                "target": f"all ready; p99 <= 1.5 x local = {1.5 * lstorm['api_p99_ms']:.0f}",
                "met": storm["ready"] == storm["spawns"]
                and storm["api_p99_ms"] <= 1.5 * lstorm["api_p99_ms"],
            },
            {
                "n": n,
                "measure": "Hub restart: API answers / all checked (s); ready after",
                "ours": f"{rs['api_s']:.2f} / {rs['checked_s']:.2f}; {rs['ready_after']}/{n} "
                f"({rs['sshd_logins']} SSH logins; machine CPU {rs['machine_cpu_s']:.1f} s, "
                f"the Hub's {rs['hub_cpu_s']:.1f})",
                "local": f"{lrs['api_s']:.2f} / {lrs['checked_s']:.2f}; {lrs['ready_after']}/{n} "
                f"(machine CPU {lrs['machine_cpu_s']:.1f} s, the Hub's {lrs['hub_cpu_s']:.1f})",
                "target": f"API <= 2 x local + 5 = {restart_limit:.1f}; all ready",
                "met": rs["api_s"] <= restart_limit and rs["ready_after"] == n,
            },
        ]
    return table


def table(table_rows: list[dict]) -> str:
    mark = {True: "yes", False: "**no**", None: ""}
    lines = ["| N | measure | RemoteSingularitySpawner | LocalProcessSpawner | target | met |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r['n']} | {r['measure']} | {r['ours']} | {r['local']} | {r['target']} | {mark[r['met']]} |"
        for r in table_rows
    ]
    return "\n".join(lines)


def install_light_server(c) -> str:
    """The light server where every test user (and every node) can run it."""
    path = Path(c.singularity).parent / "rss-light-server.py"
    shutil.copyfile(LIGHT_SERVER, path)
    os.chmod(path, 0o755)
    return str(path)


def run(settings: Settings, json_path: Path, command: str) -> dict:
    """The whole scale run on the test cluster (holding it); returns the results."""
    import jupyterhub  # noqa: PLC0415

    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[bench --scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    names = user_names(max(settings.steps))
    with cluster_mod.exclusive(lambda: say("waiting for another run to release the test cluster")):
        say("bringing up the test cluster")
        c = cluster_mod.up()
        info = bench.machine()
        say(f"creating {len(names)} test users")
        cluster_mod.add_users(names)
        workdir = Path(tempfile.mkdtemp(prefix="rss-bench-scale-"))
        extra = SCALE_CONFIG.format(server=install_light_server(c), version=jupyterhub.__version__)
        local_extra = extra + '\nc.JupyterHub.spawner_class = "localprocess"\n'
        try:
            say("RemoteSingularitySpawner")
            ours = run_side(c, settings, workdir / "ours", 600, extra, True, lambda m: say(f"ours: {m}"))
            say("LocalProcessSpawner")
            local = run_side(
                c, settings, workdir / "local", 700, local_extra, False, lambda m: say(f"local: {m}")
            )
        finally:
            say(f"removing the {len(names)} test users")
            cluster_mod.remove_users(names)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            for side in ("ours", "local"):  # kept next to the results, to read what happened
                with contextlib.suppress(OSError):
                    kept = json_path.with_suffix(f".{side}-hub.log")
                    shutil.copyfile(workdir / side / "jupyterhub.log", kept)
            shutil.rmtree(workdir, ignore_errors=True)
    table_rows = rows(settings, ours, local)
    sides = {"ours": ours, "local": local}
    return report(json_path, command, info, settings, sides, table_rows, table(table_rows), started)


def report(json_path: Path, command: str, info: dict, settings, sides: dict, table_rows: list[dict],
           text: str, started: float, **more) -> dict:  # fmt: skip
    """Print the table and write the results, with every raw figure, as JSON; the results."""
    info["load_average_at_end"] = os.getloadavg()
    results = {
        "command": command,
        "machine": info,
        "settings": asdict(settings),
        **more,
        "server": "tests/light_server.py (stdlib HTTP; answers under its prefix)",
        **sides,
        "table": table_rows,
        "wall_s": time.perf_counter() - started,
    }
    bench.report(results, json_path, text, f"; whole run {results['wall_s'] / 60:.1f} min")
    return results

