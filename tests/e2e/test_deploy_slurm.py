"""check and deploy with placement slurm: the submit host and the nodes its sinfo lists.

The Hub config names no nodelist, only the submit host (rss-node1): the compute
nodes are those Slurm's sinfo lists there (rss-node1 and rss-node2), reached at
their NodeAddr. `deploy --config` makes every one of them trust a fresh CA, and
an unprivileged Hub with certificates then starts a server through Slurm on
rss-node2, a node the config never names. The nodes are left as they were
found: no CA trusted, no node-wide scripts, no job.
"""

from __future__ import annotations

import os

import cluster as cluster_mod
import pytest
import slurm_cluster
from conftest import nothing_left, servers_of, user_processes, wait_until
from test_certificate_mode import (  # noqa: F401 - hub_account, hub_python, keyless_users, workroot: fixtures
    ACCEPTED,
    USERS,
    cert_hub,
    hub_account,
    hub_python,
    keyless_users,
    log_sizes,
    make_ca,
    sshd_log_since,
    workroot,
)
from test_deploy_on_nodes import invoke, node_wide, row, snapshot  # noqa: F401 - node_wide: a fixture
from test_slurm import slurm  # noqa: F401 - a fixture

NODE1, NODE2 = "rss-node1", "rss-node2"
ASK = {"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"}
# cert_hub's ports are make_hub's at offset 400 + this: 700 and up, clear of the other tests' Hubs.
HUB_OFFSET = 300


@pytest.fixture
def untrusted(cluster):
    """The nodes trust no CA, before and after the test."""
    cluster_mod.untrust_ca()
    yield
    cluster_mod.untrust_ca()


def header(out):
    return next(line.split() for line in out.splitlines() if line.startswith("NODE "))


def host_rows(out):
    """The first cell of each row of the table (the lines after its header, before the reasons)."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("NODE ")))
    labels = []
    for line in lines[start + 1 :]:
        if not line or line.split()[0].endswith(":"):
            break
        labels.append(line.split()[0])
    return labels


def test_deploy_config_with_placement_slurm_lets_a_certificate_spawn_run_through_slurm(
    cluster, slurm, node_wide, untrusted, workroot, hub_account, hub_python, keyless_users  # noqa: F811
):  # fmt: skip
    ca_dir = workroot / "slurm-ca"
    ca_dir.mkdir()
    os.chown(ca_dir, hub_account.pw_uid, hub_account.pw_gid)
    ca = make_ca(ca_dir, hub_account)
    submit = cluster.node(NODE1)
    hub = cert_hub(
        cluster, workroot, hub_account, hub_python, ca, "slurm-hub", HUB_OFFSET,
        placement='"slurm"', slurm_submit_host=f'"{NODE1}:{submit.ip}"',
    )  # fmt: skip
    hub.nodelist = ""  # the compute nodes are Slurm's, reached at their NodeAddr
    config = str(hub.write_config())

    # Before: both of Slurm's nodes are found and shown with their roles; neither trusts the CA.
    code, out = invoke(cluster, "check", "--config", config)
    assert code == 1, out
    assert f"placement slurm: submit host {NODE1} ({submit.ip}) and the nodes its sinfo lists" in out
    assert header(out) == ["NODE", "ROLE", "SSH", "SLURM", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"]
    assert host_rows(out) == [NODE1, NODE2], out
    node1, node2 = row(out, NODE1), row(out, NODE2)
    runtime = "singularity-ce"  # the stand-in's flavour
    assert node1[:8] == [NODE1, f"({submit.ip})", "submit,", "compute", "ok", "(root)", "ok", runtime], out
    assert node2[:7] == [NODE2, f"({cluster.node(NODE2).ip})", "compute", "ok", "(root)", "-", runtime]
    for cells in (node1, node2):
        assert cells[-3:] == ["missing", "NO", "NO"], out
    for node in (NODE1, NODE2):
        assert f"{node}: sshd does not trust the CA" in out, out

    # A dry run says what it would do, and changes nothing anywhere.
    code, out = invoke(cluster, "deploy", "--config", config, "--dry-run")
    assert code == 0, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-5:] == ["would", "install", "would", "trust", "yes"], out
    assert snapshot(node_wide) == {}
    code, out = invoke(cluster, "check", "--config", config)
    assert code == 1 and row(out, NODE2)[-2:] == ["NO", "NO"], out

    code, out = invoke(cluster, "deploy", "--config", config)
    assert code == 0, out
    assert host_rows(out) == [NODE1, NODE2], out
    for node in (NODE1, NODE2):
        assert row(out, node)[-3:] == ["INSTALLED", "TRUSTED", "yes"], out
    code, out = invoke(cluster, "check", "--config", config)
    assert code == 0, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-3:] == ["current", "yes", "yes"], out

    # A certificate spawn through Slurm, on the node the config never named.
    user = USERS[0]
    sizes = log_sizes()
    hub.start()
    try:
        hub.ensure_user(user)
        r = hub.spawn(user, options={**ASK, "host": NODE2})
        assert r.status_code in (201, 202), r.text
        model = hub.wait_ready(user)
        assert model["state"]["node"] == NODE2, model["state"]
        assert hub.through_proxy(user).status_code == 200
        (job,) = slurm_cluster.jobs(user)
        assert (job["state"], job["node"], job["partition"]) == ("RUNNING", NODE2, "debug")
        assert servers_of(NODE2, user), user_processes(NODE2, user)
        for node in (NODE1, NODE2):  # sbatch on the submit host, the server on the compute node
            accepted = ACCEPTED.findall(sshd_log_since(node, sizes[node]))
            logins = [kind for who, kind in accepted if who == user]
            assert logins and all(kind.endswith("-CERT") for kind in logins), (node, logins)
        hub.stop_server(user)
        assert wait_until(lambda: nothing_left(NODE2, user)), user_processes(NODE2, user)
        assert wait_until(lambda: not slurm_cluster.jobs(user), timeout=30), slurm_cluster.jobs(user)
    finally:
        hub.stop()
        slurm_cluster.cancel_all(user)
