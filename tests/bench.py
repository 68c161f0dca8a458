"""The benchmark behind ``invoke bench``: this spawner against LocalProcessSpawner.

Both run the same single-user command (the cluster's jupyterhub-singleuser)
with a real JupyterHub and configurable-http-proxy, one after the other in
the same run: RemoteSingularitySpawner on the two test nodes over SSH,
LocalProcessSpawner on the hub host (the Hub runs as root and starts it as the
test user). What is left between the two is SSH, the scripts and the
stand-in runtime.

Measured:

- spawn latency, REST request to ready, over ``spawns`` spawns one at a time;
- a poll round over ``servers`` running named servers (the test users on both
  nodes): wall time, and SSH connections opened (the spawner's own counter and
  the nodes' sshd logs);
- the Hub's restart with those servers running, against an empty restart;
- the Hub's resident memory with those servers running, against none;
- a storm of ``storm`` concurrent spawns: successes, and ``GET /hub/api/``
  response times sampled every 50 ms meanwhile;
- certificate mode: the spawn latency with the nodes trusting a CA (deployed
  by the admin command), and what making a login's key and certificate costs;
- the image's JupyterHub checked before each start (warm cache) against no
  check: two Hubs at once, their spawns alternating.

Prints one table (Markdown) and writes everything as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cluster as cluster_mod
import requests
from harness import Hub

TESTS = Path(__file__).resolve().parent
USERS = ("rss-alice", "rss-bob", "rss-carol")
SAMPLE_INTERVAL = 0.05
MIB = 1024 * 1024

COMMON_CONFIG = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from bench_hub import HANDLERS
c.JupyterHub.extra_handlers = HANDLERS
c.JupyterHub.named_server_limit_per_user = 0
"""
LOCAL_CONFIG = """
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{singleuser!r}]
"""


@dataclass(frozen=True)
class Settings:
    servers: int = 48
    spawns: int = 10
    storm: int = 24
    restarts: int = 3
    poll_rounds: int = 5

    @classmethod
    def quick(cls) -> Settings:
        """A short smoke run: every measurement, few servers."""
        return cls(servers=6, spawns=3, storm=4, restarts=1, poll_rounds=2)


@dataclass(frozen=True)
class Server:
    user: str
    name: str
    options: dict


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100), interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def plan(count: int, prefix: str, nodes: Sequence[str]) -> list[Server]:
    """*count* named servers spread over the test users and, for each user, over the nodes."""
    return [
        Server(
            USERS[i % len(USERS)],
            f"{prefix}{i}",
            {"host": nodes[(i // len(USERS)) % len(nodes)]} if nodes else {},
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- driving the Hub


def spawn_until_ready(hub: Hub, server: Server) -> float:
    """Seconds from the REST request to the server being ready; raises if it failed."""
    started = time.perf_counter()
    r = hub.spawn(server.user, server.name, server.options)
    if r.status_code == 202:
        events = hub.progress_events(server.user, server.name, timeout=180)
        final = events[-1] if events else {}
        if not final.get("ready"):
            raise RuntimeError(f"spawn of {server.user}/{server.name} failed: {final.get('message', final)}")
    elif r.status_code != 201:
        raise RuntimeError(f"spawn of {server.user}/{server.name} refused: {r.status_code} {r.text}")
    return time.perf_counter() - started


def in_parallel(func: Callable[[Server], object], servers: Sequence[Server], workers: int) -> list:
    """func(server) for every server, *workers* at a time; exceptions are returned, not raised."""

    def call(server):
        try:
            return func(server)
        except Exception as e:  # noqa: BLE001 - collected and reported
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(call, servers))


def spawn_all(hub: Hub, servers: Sequence[Server], workers: int = 6) -> None:
    results = in_parallel(partial(spawn_until_ready, hub), servers, workers)
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(servers)} spawns failed; first: {failures[0]}")


def stop_all(hub: Hub, workers: int = 8) -> None:
    """Stop every server of the test users (best effort: used in clean-ups too)."""
    servers = []
    for user in USERS:
        r = hub.api("GET", f"/users/{user}")
        if r.ok:
            servers += [Server(user, name, {}) for name in r.json().get("servers", {})]
    in_parallel(lambda s: hub.stop_server(s.user, s.name, timeout=120), servers, workers)


def running_count(hub: Hub) -> int:
    count = 0
    for user in USERS:
        r = hub.api("GET", f"/users/{user}")
        r.raise_for_status()
        count += sum(1 for s in r.json().get("servers", {}).values() if s.get("ready"))
    return count


def timed_restart(hub: Hub) -> float:
    """Stop the Hub (servers keep running) and start it again: seconds until its API answers."""
    hub.stop()
    started = time.perf_counter()
    hub.start(timeout=180, interval=0.02)
    return time.perf_counter() - started


def accepted_logins() -> int:
    """SSH logins the nodes' sshd accepted so far (their logs)."""
    total = 0
    for node in cluster_mod.describe().nodes:
        try:
            total += node.sshd_log.read_text(errors="replace").count("Accepted publickey")
        except OSError:
            pass
    return total


def storm(hub: Hub, servers: Sequence[Server]) -> dict:
    """Spawn *servers* all at once while sampling the Hub API's response time."""
    samples: list[float] = []
    done = threading.Event()

    def sample():
        session = requests.Session()
        next_at = time.perf_counter()
        while not done.is_set():
            started = time.perf_counter()
            try:
                session.get(f"{hub.url}/hub/api/", timeout=30).raise_for_status()
            except requests.RequestException:
                samples.append(float("inf"))
            else:
                samples.append(time.perf_counter() - started)
            next_at += SAMPLE_INTERVAL
            time.sleep(max(0.0, next_at - time.perf_counter()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        results = in_parallel(partial(spawn_until_ready, hub), servers, len(servers))
    finally:
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    errors = [str(r) for r in results if isinstance(r, Exception)]
    return {
        "spawns": len(servers),
        "ready": len(servers) - len(errors),
        "wall_s": wall,
        "errors": errors[:5],
        "api_samples": len(samples),
        "api_p50_ms": percentile(samples, 50) * 1000,
        "api_p99_ms": percentile(samples, 99) * 1000,
        "api_max_ms": max(samples) * 1000,
    }


def latencies(hub: Hub, servers: Sequence[Server]) -> dict:
    """Spawn each server alone, until ready, and stop it again."""
    times = []
    for server in servers:
        times.append(spawn_until_ready(hub, server))
        hub.stop_server(server.user, server.name, timeout=120)
    return {"spawn_s": times, "median_s": statistics.median(times), "p95_s": percentile(times, 95)}


# --------------------------------------------------------------------------- the two runs


def new_hub(c, workdir: Path, offset: int, extra: str) -> Hub:
    return Hub(
        workdir=workdir,
        hub_ip=c.hub_ip,
        nodelist=",".join(f"{n.name}:{n.ip}" for n in c.nodes),
        singularity=str(c.singularity),
        image=str(c.image),
        public_port=18000 + offset,
        hub_port=18081 + offset,
        proxy_api_port=18001 + offset,
        log_level="INFO",
        cleanup_servers=False,
        extra_config=COMMON_CONFIG + extra,
    )


@contextlib.contextmanager
def running(hub: Hub) -> Iterator[Hub]:
    """The Hub started with the test users; afterwards its servers and the Hub stopped."""
    try:
        hub.start()
        for user in USERS:
            hub.ensure_user(user)
        yield hub
    except Exception:
        print(f"Hub log: {hub.log_path}\n{hub.log_tail()}", file=sys.stderr)
        raise
    finally:
        if hub.process is not None and hub.process.poll() is None:
            stop_all(hub)
        hub.stop()


def run_ours(c, s: Settings, workdir: Path, say: Callable[[str], None]) -> dict:
    nodes = [n.name for n in c.nodes]
    out: dict = {}
    with running(new_hub(c, workdir, 200, "")) as hub:
        say(f"ours: {s.restarts} empty Hub restarts")
        out["restart_empty_s"] = statistics.median(timed_restart(hub) for _ in range(s.restarts))
        say(f"ours: {s.spawns} spawns one at a time")
        out["latency"] = latencies(hub, plan(s.spawns, "lat-", nodes))
        out["rss_none_bytes"] = hub.rss_bytes()
        say(f"ours: {s.servers} servers")
        spawn_all(hub, plan(s.servers, "bench-", nodes))
        out["rss_n_bytes"] = hub.rss_bytes()
        sshd_before = accepted_logins()
        rounds = []
        for _ in range(s.poll_rounds):
            r = hub.api("POST", "/bench/poll-round")
            r.raise_for_status()
            rounds.append(r.json())
        out["poll"] = {
            "rounds": rounds,
            "median_wall_s": statistics.median(r["wall_s"] for r in rounds),
            "max_wall_s": max(r["wall_s"] for r in rounds),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in rounds),
            "ssh_connections_opened": sum(r["ssh_connections_opened"] for r in rounds),
            "sshd_logins": accepted_logins() - sshd_before,
        }
        say(f"ours: {s.restarts} Hub restarts with {s.servers} servers")
        sshd_before = accepted_logins()
        out["restart_n_s"] = statistics.median(timed_restart(hub) for _ in range(s.restarts))
        out["restart_n_sshd_logins"] = accepted_logins() - sshd_before
        out["running_after_restart"] = running_count(hub)
        stop_all(hub)
        say(f"ours: storm of {s.storm}")
        out["storm"] = storm(hub, plan(s.storm, "storm-", nodes))
    return out


def signing(rounds: int = 200) -> dict:
    """What certificate mode adds to each login: a fresh key, a signed certificate, loaded."""
    from remotesingularityspawner import remote  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp) / "ca"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
        request = remote.CertificateRequest(str(ca), "rss-alice", remote.key_id("rss-alice", "", "rss-alice"))
        request.login_key()  # the CA is loaded once per Hub process
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            request.login_key()
            times.append(time.perf_counter() - started)
    return {"login_key_s": times, "median_ms": 1000 * statistics.median(times)}


CERT_CONFIG = """
c.RemoteSingularitySpawner.ssh_auth = "certificate"
c.RemoteSingularitySpawner.ssh_ca_key_file = {ca!r}
c.RemoteSingularitySpawner.known_hosts_files = [{known_hosts!r}]
"""


def run_certificates(c, s: Settings, workdir: Path, say: Callable[[str], None]) -> dict:
    """Spawn latency with certificates, the nodes made to trust a CA by deploy."""
    from remotesingularityspawner.admin import deploy  # noqa: PLC0415

    workdir.mkdir(parents=True)
    ca = workdir / "ssh_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    say("certificates: deploy --trust-ca on the nodes")
    settings, _ = deploy.make_settings(
        hosts=",".join(f"{n.name}:{n.ip}" for n in c.nodes), exe=str(c.singularity), image=str(c.image),
        known_hosts=[str(c.known_hosts)], ca=(Path(f"{ca}.pub").read_text().strip(), "bench"),
    )  # fmt: skip
    reports, _ = deploy.run(settings, "root", [str(c.root_key)], change=True)
    if not all(r.fit for r in reports):
        raise RuntimeError(deploy.format_table(reports))
    out: dict = {"signing": signing()}
    extra = CERT_CONFIG.format(ca=str(ca), known_hosts=str(c.known_hosts))
    try:
        with running(new_hub(c, workdir / "hub", 400, extra)) as hub:
            say(f"certificates: {s.spawns} spawns one at a time")
            out["latency"] = latencies(hub, plan(s.spawns, "cert-", [n.name for n in c.nodes]))
    finally:
        cluster_mod.untrust_ca()  # the nodes' sshd as the cluster made it
    return out


SLURM_CONFIG = """
c.RemoteSingularitySpawner.placement = "slurm"
c.RemoteSingularitySpawner.slurm_default_resources = {"cpus": 1, "memory": "256M", "time": "0:10:00"}
"""


def run_slurm(c, s: Settings, workdir: Path, say: Callable[[str], None]) -> dict:
    """Spawn latency with placement slurm on the idle cluster: submit, allocate, start in the job."""
    import slurm_cluster  # noqa: PLC0415

    say("slurm: bringing up slurmctld and the slurmd's")
    slurm_cluster.up()
    slurm_cluster.cancel_all()
    servers = [Server(USERS[i % len(USERS)], f"slurm-{i}", {"partition": "debug"}) for i in range(s.spawns)]
    try:
        with running(new_hub(c, workdir, 500, SLURM_CONFIG)) as hub:
            say(f"slurm: {s.spawns} spawns one at a time")
            return {"latency": latencies(hub, servers)}
    finally:
        slurm_cluster.cancel_all()


def run_image_check(c, s: Settings, workdir: Path, say: Callable[[str], None]) -> dict:
    """Spawn latency with the image's JupyterHub checked (warm cache) and without, side by side:
    two Hubs up at once, their spawns alternating, so both see the same machine."""
    nodes = [n.name for n in c.nodes]
    images = f"c.RemoteSingularitySpawner.images = {[{'name': 'jupyter', 'path': str(c.image)}]!r}\n"
    off = images + "c.RemoteSingularitySpawner.check_image_version = False\n"
    with running(new_hub(c, workdir / "checked", 900, images)) as checked:
        with running(new_hub(c, workdir / "unchecked", 950, off)) as unchecked:
            # Fill each user's cache on each node: the warm case, every start but an image's first.
            say("image check: a start per user and node to fill the version cache")
            latencies(checked, plan(len(USERS) * len(nodes), "warm-", nodes))
            # Twice the spawns of the latency figure: the difference sought is far below the
            # spread of a single spawn, and pairs taken back to back cancel the machine's drift.
            count = 2 * s.spawns
            say(f"image check: {count} spawns each, alternating with and without the check")
            times: dict[str, list[float]] = {"checked": [], "unchecked": []}
            pairs = zip(plan(count, "chk-", nodes), plan(count, "nochk-", nodes), strict=True)
            for with_check, without in pairs:
                for hub, server, key in ((checked, with_check, "checked"), (unchecked, without, "unchecked")):
                    times[key].append(spawn_until_ready(hub, server))
                    hub.stop_server(server.user, server.name, timeout=120)
    out: dict = {key: {"spawn_s": t, "median_s": statistics.median(t)} for key, t in times.items()}
    differences = [a - b for a, b in zip(times["checked"], times["unchecked"], strict=True)]
    out["paired_difference_median_s"] = statistics.median(differences)
    return out


def run_local(c, s: Settings, workdir: Path, say: Callable[[str], None]) -> dict:
    singleuser = str(c.venv / "bin" / "jupyterhub-singleuser")
    out: dict = {}
    with running(new_hub(c, workdir, 300, LOCAL_CONFIG.format(singleuser=singleuser))) as hub:
        say(f"local: {s.spawns} spawns one at a time")
        out["latency"] = latencies(hub, plan(s.spawns, "lat-", []))
        say(f"local: storm of {s.storm}")
        out["storm"] = storm(hub, plan(s.storm, "storm-", []))
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    import jupyterhub  # noqa: PLC0415

    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "jupyterhub": jupyterhub.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def rows(s: Settings, ours: dict, local: dict, certs: dict, slurm: dict, image_check: dict) -> list[dict]:
    """The table: each measurement, its reference, the target and whether it is met."""
    lat, llat, clat, slat = ours["latency"], local["latency"], certs["latency"], slurm["latency"]
    slurm_overhead = slat["median_s"] - lat["median_s"]
    check_overhead = image_check["checked"]["median_s"] - image_check["unchecked"]["median_s"]
    cert_overhead = clat["median_s"] - lat["median_s"]
    signing_ms = certs["signing"]["median_ms"]
    overhead = lat["median_s"] - llat["median_s"]
    poll = ours["poll"]
    restart_limit = 2 * ours["restart_empty_s"] + 1
    per_server = (ours["rss_n_bytes"] - ours["rss_none_bytes"]) / s.servers
    st, lst = ours["storm"], local["storm"]
    return [
        {
            "measure": f"spawn latency, median of {s.spawns} (s)",
            "ours": f"{lat['median_s']:.2f}",
            "reference": f"local {llat['median_s']:.2f}; difference {overhead:+.2f}",
            "target": "difference <= 0.3 s",
            "met": overhead <= 0.3,
        },
        {
            "measure": f"spawn latency, p95 of {s.spawns} (s)",
            "ours": f"{lat['p95_s']:.2f}",
            "reference": f"local {llat['p95_s']:.2f}; difference {lat['p95_s'] - llat['p95_s']:+.2f}",
            "target": "",
            "met": None,
        },
        {
            "measure": f"poll round over {s.servers} servers, median of {len(poll['rounds'])} (s)",
            "ours": f"{poll['median_wall_s']:.2f}",
            "reference": f"max {poll['max_wall_s']:.2f}; SSH connections opened "
            f"{poll['ssh_connections_opened']} (sshd logins {poll['sshd_logins']}); Hub CPU "
            f"{1000 * poll['median_cpu_s'] / s.servers:.1f} ms per server",
            "target": "<= 1 s",
            "met": poll["max_wall_s"] <= 1,
        },
        {
            "measure": f"Hub restart with {s.servers} servers (s)",
            "ours": f"{ours['restart_n_s']:.2f}",
            "reference": f"empty restart {ours['restart_empty_s']:.2f}; "
            f"{ours['running_after_restart']}/{s.servers} still ready after",
            "target": f"<= 2 x empty + 1 s = {restart_limit:.2f}",
            "met": ours["restart_n_s"] <= restart_limit and ours["running_after_restart"] == s.servers,
        },
        {
            "measure": f"storm of {s.storm} concurrent spawns: ready",
            "ours": f"{st['ready']}/{st['spawns']} in {st['wall_s']:.1f} s",
            "reference": f"local {lst['ready']}/{lst['spawns']} in {lst['wall_s']:.1f} s",
            "target": f"{s.storm}/{s.storm}",
            "met": st["ready"] == st["spawns"],
        },
        {
            "measure": "storm: GET /hub/api/ p50 / p99 / max (ms)",
            "ours": f"{st['api_p50_ms']:.0f} / {st['api_p99_ms']:.0f} / {st['api_max_ms']:.0f}",
            "reference": f"local {lst['api_p50_ms']:.0f} / {lst['api_p99_ms']:.0f} / {lst['api_max_ms']:.0f}",
            "target": f"p99 <= 1.5 x local = {1.5 * lst['api_p99_ms']:.0f}",
            "met": st["api_p99_ms"] <= 1.5 * lst["api_p99_ms"],
        },
        {
            "measure": f"spawn latency with certificates, median of {s.spawns} (s)",
            "ours": f"{clat['median_s']:.2f}",
            "reference": f"user keys {lat['median_s']:.2f}; difference {cert_overhead:+.2f}",
            "target": "difference <= 0.1 s",
            "met": cert_overhead <= 0.1,
        },
        {
            "measure": "certificate per login: key made, signed, loaded; median (ms)",
            "ours": f"{signing_ms:.2f}",
            "reference": "made for each new SSH connection",
            "target": "<= 2 ms",
            "met": signing_ms <= 2,
        },
        {
            "measure": f"spawn latency with placement slurm, idle cluster, median of {s.spawns} (s)",
            "ours": f"{slat['median_s']:.2f}",
            "reference": f"placement ssh {lat['median_s']:.2f}; difference {slurm_overhead:+.2f}",
            "target": "difference <= 1.5 s",
            "met": slurm_overhead <= 1.5,
        },
        {
            "measure": "spawn latency, image's JupyterHub checked (warm cache), "
            f"median of {2 * s.spawns} (s)",
            "ours": f"{image_check['checked']['median_s']:.2f}",
            "reference": f"unchecked {image_check['unchecked']['median_s']:.2f}; difference "
            f"{check_overhead:+.3f} (median of the pairs' differences "
            f"{image_check['paired_difference_median_s']:+.3f})",
            "target": "difference <= 0.05 s",
            "met": check_overhead <= 0.05,
        },
        {
            "measure": f"Hub memory with {s.servers} servers (MiB)",
            "ours": f"{ours['rss_n_bytes'] / MIB:.1f}",
            "reference": f"none {ours['rss_none_bytes'] / MIB:.1f}; {per_server / MIB:+.2f} per server",
            "target": "<= +1 MiB per server",
            "met": per_server <= MIB,
        },
    ]


def table(table_rows: list[dict]) -> str:
    mark = {True: "yes", False: "**no**", None: ""}
    lines = [
        "| measure | RemoteSingularitySpawner | reference | target | met |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['measure']} | {r['ours']} | {r['reference']} | {r['target']} | {mark[r['met']]} |"
        for r in table_rows
    ]
    return "\n".join(lines)


def run(settings: Settings, json_path: Path, command: str) -> dict:
    """Run the whole benchmark on the test cluster (holding it); returns the results."""

    def say(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with cluster_mod.exclusive(lambda: say("waiting for another run to release the test cluster")):
        say("bringing up the test cluster")
        c = cluster_mod.up()
        info = machine()
        workdir = Path(tempfile.mkdtemp(prefix="rss-bench-"))
        ours = run_ours(c, settings, workdir / "ours", say)
        local = run_local(c, settings, workdir / "local", say)
        certs = run_certificates(c, settings, workdir / "certs", say)
        slurm = run_slurm(c, settings, workdir / "slurm", say)
        image_check = run_image_check(c, settings, workdir / "images", say)
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_average_at_end"] = os.getloadavg()
    table_rows = rows(settings, ours, local, certs, slurm, image_check)
    results = {
        "command": command,
        "machine": info,
        "settings": asdict(settings),
        "ours": ours,
        "local": local,
        "certificates": certs,
        "slurm": slurm,
        "image_check": image_check,
        "table": table_rows,
    }
    report(results, json_path, table(table_rows))
    return results


def report(results: dict, json_path: Path, table_text: str, more: str = "") -> None:
    """Write *results* as JSON and print the table, the machine and the command."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    info = results["machine"]
    print(f"\n{table_text}\n")
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}, "
        f"Python {info['python']}, JupyterHub {info['jupyterhub']}; load average "
        f"{info['load_average_at_start'][0]:.2f} at start, {info['load_average_at_end'][0]:.2f} at end{more}"
    )
    print(f"Command: {results['command']}\nJSON: {json_path}")
