"""Real Slurm on the test cluster (tests/slurm_cluster.py): what the Slurm tests rely on.

A test user logs in to a node over SSH, as the spawner does, and drives Slurm with the
plain client commands: the job runs on the node asked for, a step started inside it
(``srun --overlap``) runs there too and sees the job, and cancel_all() leaves nothing.
"""

from __future__ import annotations

import shlex
import subprocess

import cluster as cluster_mod
import pytest
import slurm_cluster
from conftest import nothing_left, user_processes, wait_until

USER = "rss-alice"
NODES = ("rss-node1", "rss-node2")


@pytest.fixture(scope="module")
def slurm(cluster):
    slurm_cluster.up()
    yield
    slurm_cluster.cancel_all()


def ssh(cluster, node: str, command: str, user: str = USER) -> subprocess.CompletedProcess[str]:
    """Run command on node as user over SSH (the user's key and known_hosts), text mode."""
    argv = ["runuser", "-u", user, "--", "ssh", "-o", "BatchMode=yes", cluster.node(node).ip, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def submit(cluster, login_node: str, *options: str, wrap: str = "exec sleep infinity") -> str:
    """sbatch over SSH on login_node as USER; the job id."""
    argv = ["sbatch", "--parsable", "-c", "1", "--mem", "100M", "-t", "10", "-o", "job-%j.log", *options]
    r = ssh(cluster, login_node, shlex.join([*argv, "--wrap", wrap]))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def running(job_id: str) -> dict | None:
    return next((j for j in slurm_cluster.jobs() if j["id"] == job_id and j["state"] == "RUNNING"), None)


@pytest.mark.parametrize("node", NODES)
def test_a_job_runs_on_the_node_asked_for(cluster, slurm, node):
    login_node = NODES[0]  # submitted from the other node too: Slurm sends it over
    job_id = submit(cluster, login_node, "-w", node, "-J", "where", wrap="hostname; exec sleep infinity")

    job = wait_until(lambda: running(job_id), timeout=10)
    assert job, slurm_cluster.jobs()
    assert (job["node"], job["partition"], job["user"], job["name"]) == (node, "debug", USER, "where")
    output = cluster.user(USER).home / f"job-{job_id}.log"
    assert wait_until(lambda: output.exists() and output.read_text().strip(), timeout=10) == node
    assert [p for p in user_processes(node, USER) if p["args"] == "sleep infinity"]
    other = next(n for n in NODES if n != node)
    assert not [p for p in user_processes(other, USER) if p["args"] == "sleep infinity"]
    slurm_cluster.cancel_all(USER)


def test_an_overlap_step_runs_in_the_job_on_its_node(cluster, slurm):
    node = NODES[1]
    job_id = submit(cluster, node, "-w", node)
    assert wait_until(lambda: running(job_id), timeout=10), slurm_cluster.jobs()

    step = f"srun --jobid={job_id} --overlap --ntasks=1 --nodes=1 --quiet -- sh -c 'env; hostname'"
    r = ssh(cluster, node, step)

    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"SLURM_JOB_ID={job_id}" in lines
    assert lines[-1] == node
    slurm_cluster.cancel_all(USER)


def test_cancel_all_leaves_no_job_and_no_process(cluster, slurm):
    ids = slurm_cluster.fill("rss-bob")
    assert len(ids) == 2 * len(NODES)  # two CPUs on each node, all of them now busy
    pending = submit(cluster, NODES[0])
    assert wait_until(lambda: _reason(pending) == "Resources", timeout=10), slurm_cluster.jobs()

    slurm_cluster.cancel_all()

    assert slurm_cluster.jobs() == []
    for node in NODES:
        for user in ("rss-bob", USER):
            # A kept SSH connection of another test's Hub (sshd: USER) is not a job's process.
            gone = wait_until(lambda n=node, u=user: nothing_left(n, u), timeout=10)
            assert gone, (node, user, user_processes(node, user))


def _reason(job_id: str) -> str | None:
    return next((j["reason"] for j in slurm_cluster.jobs() if j["id"] == job_id), None)


def test_up_starts_slurmd_again_on_a_restarted_node(cluster, slurm):
    node = NODES[0]
    cluster_mod.kill_node(node)
    cluster_mod.start_node(node)

    slurm_cluster.up()

    job_id = submit(cluster, node, "-w", node)
    assert wait_until(lambda: running(job_id), timeout=10), slurm_cluster.jobs()
    slurm_cluster.cancel_all(USER)
