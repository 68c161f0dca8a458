"""Pure builders: what each node script is run with, from plain values.

Each returns a :class:`remote.ScriptCall` (script, argv, stdin, timeout),
tested as data without SSH; the spawner only gathers the values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from .remote import ScriptCall, env_payload
from .remote.protocol import check_words
from .request import Bind

# The ports a server may listen on (mirrored in scripts/common.sh; a unit test keeps them equal).
PORT_BOUNDS = (1024, 65535)


def server_dir(remote_state_dir: str, username: str, server_name: str) -> str:
    """The server's directory on the node: file-name-safe and distinct per server."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", server_name or "default")[:40].lstrip(".") or "_"
    digest = hashlib.sha256(f"{username}\0{server_name}".encode()).hexdigest()[:10]
    return f"{remote_state_dir}/servers/{slug}-{digest}"


def start_call(
    *,
    exe: str,
    image: str,
    server_dir: str,
    port_range: tuple[int, int],
    timeout: int,
    singularity_args: Sequence[str],
    binds: Sequence[Bind],
    command: Sequence[str],
    env: Mapping[str, str],
    slurm_job: str = "",
    hub_jupyterhub: str = "",
    version_cache: str = "",
) -> ScriptCall:
    """start_singleuser.sh: the runtime, image and binds as argv; the environment on stdin.

    ValueError if a value cannot travel (see check_words and env_payload). *timeout*
    is the script's own wait for the server to listen; the call itself is
    bounded by the Hub's start_timeout. *slurm_job*: start the server as a step
    of that job (``srun --overlap``), so it is confined to it and ends with it.
    *hub_jupyterhub*: the Hub's JupyterHub version, which the image's must match
    (another major version is refused; "": no check); *version_cache*: the file
    on the node that keeps each image's version.
    """
    args = [
        "--exe", exe,
        "--image", image,
        "--server-dir", server_dir,
        "--port-range", "{}-{}".format(*port_range),
        "--timeout", str(timeout),
    ]  # fmt: skip
    for extra in singularity_args:
        args += ["--singularity-arg", extra]
    for bind in binds:
        args += ["--bind", bind.spec]
    if slurm_job:
        args += ["--slurm-job", slurm_job]
    if hub_jupyterhub:
        args += ["--hub-jupyterhub", hub_jupyterhub, "--version-cache", version_cache]
    args = (*args, "--", *command)
    check_words(args)
    return ScriptCall("start_singleuser.sh", args, env_payload(env))


def version_cache(remote_state_dir: str) -> str:
    """The file on the node that keeps the JupyterHub version of each image the user ran."""
    return f"{remote_state_dir}/image-jupyterhub-versions"


def check_call(pid: int, start_time: int, timeout: float) -> ScriptCall:
    """check_pid.sh: is the server with this PID and start time still running?"""
    return ScriptCall("check_pid.sh", ("--pid", str(pid), "--start-time", str(start_time)), timeout=timeout)


def stop_call(
    pid: int,
    start_time: int,
    server_dir: str,
    term_timeout: float,
    kill_timeout: float,
    answer_timeout: float,
    now: bool = False,
) -> ScriptCall:
    """stop.sh: the stop ladder; *now* sends SIGKILL without waiting after SIGTERM."""
    term = 0 if now else int(term_timeout)
    args = (
        "--pid", str(pid),
        "--start-time", str(start_time),
        "--server-dir", server_dir,
        "--term-timeout", str(term),
        "--kill-timeout", str(int(kill_timeout)),
    )  # fmt: skip
    return ScriptCall("stop.sh", args, timeout=term + kill_timeout + answer_timeout)


def status_call(timeout: float) -> ScriptCall:
    """node_status.sh: the node's load, memory and servers, for the form."""
    return ScriptCall("node_status.sh", (), timeout=timeout)


# --- Slurm (slurm_job.sh, on the submit host) ------------------------------------------


def job_name(username: str, server_name: str) -> str:
    """The job's name in squeue: which user's server it holds."""
    name = f"jupyter-{username}" + (f"-{server_name}" if server_name else "")
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:100]


def submit_call(
    *,
    job_name: str,
    partition: str,
    resources,
    host: str | None,
    output_dir: str,
    sbatch_args: Sequence[str],
    timeout: float,
    site_options: Mapping[str, str] | None = None,
) -> ScriptCall:
    """slurm_job.sh submit: a job that holds the allocation the server will run in.

    *site_options*: the user's account, qos, reservation and constraint (those chosen),
    each passed as ``--NAME VALUE``."""
    args = [
        "submit",
        "--job-name", job_name,
        "--partition", partition,
        "--cpus", str(resources.cpus),
        "--memory", str(resources.memory_mb),
        "--time", str(resources.time_minutes),
        "--output-dir", output_dir,
    ]  # fmt: skip
    if resources.gpus:
        args += ["--gpus", str(resources.gpus)]
        if resources.gpu_type:
            args += ["--gpu-type", resources.gpu_type]
    if host:
        args += ["--nodelist", host]
    for name, value in (site_options or {}).items():
        args += [f"--{name}", value]
    for extra in sbatch_args:
        args += ["--sbatch-arg", extra]
    check_words(args)
    return ScriptCall("slurm_job.sh", tuple(args), timeout=timeout)


def job_state_call(job_id: str, timeout: float) -> ScriptCall:
    """slurm_job.sh state: the job's state, reason, queue position and node."""
    return ScriptCall("slurm_job.sh", ("state", "--job", job_id), timeout=timeout)


def cancel_call(job_id: str, wait: int, timeout: float, holding: Iterable[str]) -> ScriptCall:
    """slurm_job.sh cancel: scancel, then wait up to *wait* seconds while the job's state is
    one of *holding* (the states in which it holds or waits for its allocation)."""
    args = ("cancel", "--job", job_id, "--wait", str(wait), "--while-states", ",".join(sorted(holding)))
    return ScriptCall("slurm_job.sh", args, timeout=wait + timeout)


def partitions_call(timeout: float, associations: bool = False) -> ScriptCall:
    """slurm_job.sh partitions: the partitions sinfo shows the user, for the form; with
    *associations*, whether Slurm keeps accounts and the user's associations too."""
    args = ("partitions", "--associations") if associations else ("partitions",)
    return ScriptCall("slurm_job.sh", args, timeout=timeout)
