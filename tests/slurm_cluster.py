#!/usr/bin/env python3
"""A real Slurm (Debian's 22.05) on the local test cluster of tests/cluster.py.

Run as root, after ``cluster.py up``::

    python tests/slurm_cluster.py up       # start it; if already up, verify and return
    python tests/slurm_cluster.py status   # exit 0 when every node answers, 1 otherwise
    python tests/slurm_cluster.py down     # stop the Slurm daemons (munged stays)

From Python (tests/ on sys.path)::

    import slurm_cluster
    slurm_cluster.up()
    ids = slurm_cluster.fill("rss-bob")        # every CPU of partition debug busy
    slurm_cluster.jobs("rss-bob")              # [{"id", "user", "name", "state", ...}]
    slurm_cluster.cancel_all()
    subprocess.run(["sinfo"], env={**os.environ, **slurm_cluster.env()})

What up() runs:

* ``munged`` once on the machine, as user munge (its socket is a path, so the nodes reach it);
* ``slurmctld`` in the root namespaces, listening on the Hub's bridge address;
* one ``slurmd -D -N <node>`` inside each node's network, PID and mount namespaces (entered
  through the node's init, as cluster.node_run does), so jobs run on the node as if it were
  a host of its own; a node restarted by cluster.kill_node/start_node gets a new one.

Everything Slurm writes (config, state, spool, logs, PID files) is under STATE_DIR; the
config is not in /etc/slurm, so clients need ``SLURM_CONF`` (env()); the nodes' sshd sets
it for users who log in (cluster.py's ``SetEnv``).

Partitions: ``debug`` (both nodes, the default, MaxTime 60 minutes) and ``small``
(rss-node2 only, MaxTime 30 minutes). Each node has 2 CPUs and 2000 MB; rss-node2 also has
two GPUs of type ``tesla`` (GRES on stand-in device files /dev/rss-gpu0 and 1). The
nodes' features (--constraint) are rack1,ib and rack2,ib.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cluster
from cluster import _alive, _wait_for

STATE_DIR = cluster.CONFIG.state_dir / "slurm"
CONF = STATE_DIR / "slurm.conf"
CGROUP_CONF = STATE_DIR / "cgroup.conf"
GRES_CONF = STATE_DIR / "gres.conf"  # beside slurm.conf, where Slurm looks for it
CTLD_LOG = STATE_DIR / "slurmctld.log"
CTLD_CONSOLE = STATE_DIR / "slurmctld.out"  # its stdout/stderr (start-up errors)
LOCK_FILE = Path("/run/lock/rss-cluster-slurm.lock")

NODE_CPUS = 2
NODE_MEMORY_MB = 2000
PARTITIONS = {  # name -> (nodes, MaxTime in minutes, default?)
    "debug": ([n.name for n in cluster.CONFIG.nodes], 60, True),
    "small": (["rss-node2"], 30, False),
}
# The GPU node: GRES of a type, on stand-in device files (character devices of NVIDIA's major
# number 195, which nothing opens; slurmd refuses regular files). Slurm hands a job's GPUs to
# it as CUDA_VISIBLE_DEVICES.
GPU_NODE = "rss-node2"
GPU_TYPE = "tesla"
GPU_COUNT = 2
GPU_DEVICES = [Path(f"/dev/rss-gpu{i}") for i in range(GPU_COUNT)]
# Node features, for jobs' --constraint.
NODE_FEATURES = {"rss-node1": "rack1,ib", "rss-node2": "rack2,ib"}
READY_TIMEOUT = 30.0
READY_STATES = ("idle", "mixed", "allocated", "completing")  # answering, taking jobs

_SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SLURMCTLD = "/usr/sbin/slurmctld"
_SLURMD = "/usr/sbin/slurmd"
_MUNGED = "/usr/sbin/munged"
_MUNGE_RUN_DIR = Path("/run/munge")
_MUNGE_KEY = Path("/etc/munge/munge.key")
_SEP = "\x1f"  # between squeue's fields: no job name or reason holds it


class SlurmError(cluster.ClusterError):
    """Slurm could not be started, queried or driven; the message says why (with log tails)."""


def _log(msg: str) -> None:
    print(f"rss-slurm: {msg}", file=sys.stderr, flush=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SlurmError("Slurm on the test cluster must be managed as root")


def _preflight() -> None:
    _require_root()
    missing = [p for p in (_SLURMCTLD, _SLURMD, _MUNGED, "/usr/bin/sbatch") if not os.access(p, os.X_OK)]
    if missing:
        raise SlurmError(
            f"missing: {', '.join(missing)} (.ci/setup installs slurmctld slurmd slurm-client munge)"
        )
    if not _MUNGE_KEY.exists():
        raise SlurmError(f"no {_MUNGE_KEY}: mungekey --create as user munge (.ci/setup does it)")


# --------------------------------------------------------------------------- configuration


def _conf_text() -> str:
    """slurm.conf: one controller on the Hub's address, the cluster's nodes, two partitions."""
    # ProctrackType: cgroup needs a cgroup file system the nodes' namespaces do not have;
    # with linuxproc, a cancelled step's "Singularity runtime parent" and its server were
    # never signalled ("STEPD TERMINATED ... DUE TO JOB NOT ENDING WITH SIGNALS"), while a
    # plain process was. pgid signals the task's process group, which holds the server.
    cpus, memory = _declared or (NODE_CPUS, NODE_MEMORY_MB)
    nodes = "\n".join(
        f"NodeName={n.name} NodeAddr={n.ip} CPUs={cpus} RealMemory={memory}"
        + f" Features={NODE_FEATURES[n.name]}"
        + (f" Gres=gpu:{GPU_TYPE}:{GPU_COUNT}" if n.name == GPU_NODE else "")
        + " State=UNKNOWN"
        for n in cluster.CONFIG.nodes
    )
    partitions = "\n".join(
        f"PartitionName={name} Nodes={','.join(members)} MaxTime={max_time}"
        f" Default={'YES' if default else 'NO'} State=UP"
        for name, (members, max_time, default) in PARTITIONS.items()
    )
    return f"""\
# Generated by tests/slurm_cluster.py; rewritten (and the daemons restarted) when it changes.
ClusterName=rss
GresTypes=gpu
SlurmctldHost={socket.gethostname()}({cluster.CONFIG.hub_ip})
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem takes 256 MB per CPU, not the whole node.
DefMemPerCPU=256
# sbatch refuses a job over a partition's limits (MaxTime...) instead of leaving it pending.
EnforcePartLimits=ALL
# Start a job within about a second of sbatch (the backfill pass does it, every second).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
ReturnToService=2
{"SlurmdParameters=config_overrides" if _declared else ""}
MailProg=/bin/true
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
StateSaveLocation={STATE_DIR / "state"}
SlurmctldPidFile={STATE_DIR / "slurmctld.pid"}
SlurmctldLogFile={CTLD_LOG}
SlurmdSpoolDir={STATE_DIR / "spool" / "%n"}
SlurmdPidFile={STATE_DIR / "slurmd-%n.pid"}
SlurmdLogFile={STATE_DIR / "slurmd-%n.log"}
{nodes}
{partitions}
"""


_CGROUP_TEXT = """\
# Generated by tests/slurm_cluster.py: slurmd inside a node's PID namespace finds no cgroup
# file system of its own; with v1 and no automount it starts (proctrack is pgid anyway).
CgroupPlugin=cgroup/v1
CgroupAutomount=no
"""


def _write_config() -> bool:
    """Write slurm.conf and cgroup.conf; True if either changed (running daemons are outdated)."""
    spools = [STATE_DIR / "spool" / n.name for n in cluster.CONFIG.nodes]
    for d in (STATE_DIR, STATE_DIR / "state", STATE_DIR / "spool", *spools):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # users' clients read slurm.conf
    changed = False
    for i, device in enumerate(GPU_DEVICES):
        if not device.is_char_device():
            device.unlink(missing_ok=True)
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(195, i))
    gres = f"NodeName={GPU_NODE} Name=gpu Type={GPU_TYPE} File=/dev/rss-gpu[0-{GPU_COUNT - 1}]\n"
    for path, text in ((CONF, _conf_text()), (CGROUP_CONF, _CGROUP_TEXT), (GRES_CONF, gres)):
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                continue
        path.write_text(text)
        os.chmod(path, 0o644)
        changed = True
    return changed


def env() -> dict[str, str]:
    """What a Slurm client command needs in its environment (merge it into os.environ)."""
    return {"SLURM_CONF": str(CONF)}


# --------------------------------------------------------------------------- processes


def _tool_env() -> dict[str, str]:
    return {"PATH": _SYS_PATH, "LANG": "C.UTF-8", "HOME": "/root", **env()}


def _run(
    argv: Sequence[str | Path], check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess:
    cmd = [str(a) for a in argv]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_tool_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise SlurmError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    return proc


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pid_ns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids(program: str, *args: str) -> list[int]:
    """Host PIDs of live processes running program with all of args on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if argv and argv[0] == program and all(a in argv for a in args) and _alive(int(entry)):
            found.append(int(entry))
    return found


def _stop(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after timeout."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if _wait_for(lambda: not any(_alive(p) for p in pids), wait):
            return
    raise SlurmError(f"processes survived SIGKILL: {[p for p in pids if _alive(p)]}")


def _detach(argv: Sequence[str | Path], console: Path) -> None:
    """Start argv in a session of its own (setsid -f): nobody's child, it outlives the caller."""
    with open(console, "ab") as out:
        subprocess.run(["setsid", "-f", *map(str, argv)], stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.STDOUT, env=_tool_env(), check=True)  # fmt: skip


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no {path})"
    return f"--- {path}\n" + "\n".join(text)


def _log_tails() -> str:
    logs = [CTLD_CONSOLE, CTLD_LOG]
    for node in cluster.CONFIG.nodes:
        logs += [STATE_DIR / f"slurmd-{node.name}.out", STATE_DIR / f"slurmd-{node.name}.log"]
    return "\n".join(_tail(p) for p in logs)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialize up() and down() between processes."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- munged


def _munge_ok() -> bool:
    return _run(["sh", "-c", "munge -n | unmunge"], check=False).returncode == 0


def _ensure_munged() -> None:
    """munged once on the machine, as user munge, its socket in /run/munge (owned by munge)."""
    if _munge_ok():
        return
    _stop(_pids(_MUNGED))
    _MUNGE_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    _run(["chown", "munge:munge", _MUNGE_RUN_DIR])
    _log("starting munged")
    _run(["runuser", "-u", "munge", "--", _MUNGED, "--force"])
    if not _wait_for(_munge_ok, 10, interval=0.2):
        log = _tail(Path("/var/log/munge/munged.log"))
        raise SlurmError(f"munged does not answer (munge -n | unmunge)\n{log}")


# --------------------------------------------------------------------------- slurmctld


def _slurmctld_pids() -> list[int]:
    """slurmctld processes of this config (one normally)."""
    return _pids(_SLURMCTLD, "-f", str(CONF))


def _start_slurmctld() -> None:
    _log("starting slurmctld")
    _detach([_SLURMCTLD, "-D", "-i", "-f", CONF], CTLD_CONSOLE)
    if not _wait_for(
        lambda: _run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, 15, interval=0.2
    ):
        raise SlurmError("slurmctld does not answer `scontrol ping`\n" + _log_tails())


# --------------------------------------------------------------------------- slurmd per node


def _init_pid(node: cluster.NodeSpec) -> int:
    pid = cluster.describe().node(node.name).init_pid
    if pid is None:
        raise SlurmError(f"{node.name} is not running: cluster.up() or cluster.start_node() first")
    return pid


def _slurmd_pids(node: cluster.NodeSpec) -> list[int]:
    """slurmd processes for node, wherever they run (a node's old namespaces die with it)."""
    return _pids(_SLURMD, "-N", node.name)


def _slurmd_in_node(node: cluster.NodeSpec, init_pid: int) -> bool:
    """A slurmd for node runs inside the node's current PID namespace."""
    ns = _pid_ns(init_pid)
    return ns is not None and any(_pid_ns(p) == ns for p in _slurmd_pids(node))


def _start_slurmd(node: cluster.NodeSpec, init_pid: int) -> None:
    """slurmd -D in the node's network, PID, mount and UTS namespaces, detached."""
    _log(f"starting slurmd on {node.name}")
    nsenter = ["nsenter", "-t", str(init_pid), "-n", "-p", "-m", "-u", "--wdns=/", "--"]
    _detach([*nsenter, _SLURMD, "-D", "-f", CONF, "-N", node.name], STATE_DIR / f"slurmd-{node.name}.out")


def _slurmstepd_pids(init_pid: int) -> list[int]:
    """Job step daemons left in the node (they outlive slurmd)."""
    ns = _pid_ns(init_pid)
    return [p for p in _pids("slurmstepd") if _pid_ns(p) == ns] if ns else []


# --------------------------------------------------------------------------- node states


def _node_states() -> dict[str, str]:
    """Node -> sinfo's long state (e.g. idle, mixed, down*, drained); {} if slurmctld is silent."""
    proc = _run(["sinfo", "-N", "-h", "-o", "%N %T"], check=False, timeout=15)
    if proc.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())


def _not_ready() -> dict[str, str]:
    """Nodes that take no jobs, with sinfo's state ("unknown": slurmctld does not know them)."""
    states = _node_states()
    found = {n.name: states.get(n.name, "unknown") for n in cluster.CONFIG.nodes}
    return {name: state for name, state in found.items() if state not in READY_STATES}


def _resume_responding(states: dict[str, str]) -> None:
    """Nodes down or drained whose slurmd answers (no `*`): back into service."""
    for name, state in states.items():
        if state.startswith(("down", "drain")) and not state.endswith("*"):
            _run(["scontrol", "update", f"NodeName={name}", "State=RESUME"], check=False)


def _wait_ready() -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    resumed_after = time.monotonic() + 3  # ReturnToService=2 usually does it first
    while (left := _not_ready()) and time.monotonic() < deadline:
        if time.monotonic() > resumed_after:
            _resume_responding(left)
        time.sleep(0.3)
    if left:
        found = ", ".join(f"{k}: {v}" for k, v in left.items())
        raise SlurmError(f"Slurm nodes not ready after {READY_TIMEOUT:.0f} s ({found})\n{_log_tails()}")


# --------------------------------------------------------------------------- public API


def up() -> None:
    """Start munged, slurmctld and a slurmd in every node; return once every node takes jobs.

    Idempotent and quick when all runs already. A changed config restarts the Slurm
    daemons; a node restarted since (cluster.kill_node/start_node) gets its slurmd again.
    "Takes jobs": sinfo shows the node idle, mixed, allocated or completing.
    """
    _preflight()
    with _locked():
        _ensure_munged()
        if _write_config():
            _stop_daemons()
        if not _slurmctld_pids():
            _start_slurmctld()
        for node in cluster.CONFIG.nodes:
            init_pid = _init_pid(node)
            if not _slurmd_in_node(node, init_pid):
                _stop(_slurmd_pids(node))  # one left from the node's previous life, if any
                _start_slurmd(node, init_pid)
        _wait_ready()


# (CPUs, MB) declared per node instead of what the nodes have: see held_jobs().
_declared: tuple[int, int] | None = None


@contextlib.contextmanager
def held_jobs(cpus_per_node: int, memory_mb_per_node: int) -> Iterator[None]:
    """Slurm declares more CPUs and memory per node than there are (SlurmdParameters=
    config_overrides), so that a scale run's hundreds of small jobs all run; afterwards every
    job is cancelled and Slurm is as up() makes it."""
    global _declared
    _declared = (cpus_per_node, memory_mb_per_node)
    try:
        up()
        yield
    finally:
        _declared = None
        cancel_all()
        up()


def _stop_daemons() -> None:
    for node in cluster.CONFIG.nodes:
        _stop(_slurmd_pids(node))
    _stop(_slurmctld_pids())


def down() -> None:
    """Cancel every job, stop the slurmd's (and job steps left on the nodes) and slurmctld.

    munged stays: it is the machine's, shared and cheap. State and logs stay in STATE_DIR
    (cluster.down() removes it).
    """
    _require_root()
    with _locked():
        if _slurmctld_pids():
            with contextlib.suppress(SlurmError, subprocess.TimeoutExpired):
                cancel_all(timeout=10)
        _stop_daemons()
        for node in cluster.CONFIG.nodes:
            init_pid = cluster.describe().node(node.name).init_pid
            if init_pid is not None:
                _stop(_slurmstepd_pids(init_pid))


def problems() -> list[str]:
    """What keeps Slurm from taking jobs; [] when every node does."""
    if not CONF.exists() or CONF.read_text() != _conf_text():
        return [f"{CONF} missing or outdated"]
    if not _slurmctld_pids():
        return ["slurmctld is not running"]
    found = [f"{name}: {state}" for name, state in _not_ready().items()]
    return found


def jobs(user: str | None = None) -> list[dict[str, str]]:
    """The jobs squeue shows (pending, running, completing...), of user or of everyone.

    Each: id, user, name, state (PENDING, RUNNING...), reason (squeue's %r: None, Resources,
    Priority...), node (%N: the nodes, "" while pending), partition.
    """
    fmt = _SEP.join(["%i", "%u", "%T", "%r", "%N", "%P", "%j"])
    argv = ["squeue", "-h", "-o", fmt] + (["-u", user] if user else [])
    found = []
    for line in _run(argv).stdout.splitlines():
        job_id, owner, state, reason, node, partition, name = line.split(_SEP, 6)
        found.append(dict(id=job_id, user=owner, name=name, state=state, reason=reason, node=node,
                          partition=partition))  # fmt: skip
    return found


def cancel_all(user: str | None = None, timeout: float = 30) -> None:
    """scancel every job (of user), then wait until squeue shows none of them."""
    ids = [j["id"] for j in jobs(user)]
    if ids:
        _run(["scancel", *ids], check=False)  # some may have ended meanwhile
    if not _wait_for(lambda: not {j["id"] for j in jobs(user)} & set(ids), timeout, interval=0.3):
        raise SlurmError(f"jobs still shown {timeout} s after scancel: {jobs(user)}")


def submit(user: str, argv: Sequence[str]) -> str:
    """Run `sbatch --parsable ARGV...` as user on the Hub side; the job's id."""
    cmd = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={CONF}", "sbatch", "--parsable", *argv]
    return _run(cmd).stdout.strip().split(";")[0]


def _idle_cpus(partition: str) -> int:
    """sinfo's %C is allocated/idle/other/total CPUs."""
    return int(_run(["sinfo", "-h", "-p", partition, "-o", "%C"]).stdout.split("/")[1])


def fill(user: str, cpus: int | None = None, partition: str = "debug") -> list[str]:
    """Keep CPUs busy with 1-CPU `sleep` jobs of user; their ids, once all of them run.

    cpus: how many jobs; None: as many as partition has idle CPUs now (every CPU allocated).
    cancel_all(user) ends them.
    """
    count = _idle_cpus(partition) if cpus is None else cpus
    opts = ["-p", partition, "-c", "1", "--mem", "100M", "-t", "30", "-J", "fill", "-D", "/tmp"]
    ids = [submit(user, [*opts, "-o", "/dev/null", "--wrap", "exec sleep infinity"]) for _ in range(count)]

    def all_running() -> bool:
        states = {j["id"]: j["state"] for j in jobs(user)}
        return all(states.get(i) == "RUNNING" for i in ids)

    if not _wait_for(all_running, 30, interval=0.3):
        raise SlurmError(f"fill: not all of {ids} run after 30 s: {jobs(user)}")
    return ids


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_cluster.py", description="Slurm on the local test cluster.")
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
            return 0
        found = problems()
        if found:
            print("Slurm not up:\n  " + "\n  ".join(found))
            return 1
        print(_run(["sinfo"]).stdout, end="")
    except cluster.ClusterError as exc:
        print(f"slurm_cluster.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
