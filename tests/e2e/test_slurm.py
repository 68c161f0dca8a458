"""placement = "slurm" on the test cluster's real Slurm: the server runs inside the user's job.

The Hub submits, over SSH as the user on rss-node1 (the submit host), a job
that holds an allocation, and starts the server in it with `srun --overlap`
on the node Slurm chose. Everything a user and an admin would see is checked
against Slurm itself (squeue, the server's environment), not the Hub's word.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time

import cluster as cluster_mod
import pytest
import slurm_cluster
from conftest import login, make_hub, nothing_left, servers_of, spawn_failure, wait_until
from slurm_cases import BAD_VALUES

POLL = 3  # the Hub's poll_interval in these tests
START_TIMEOUT = 30
QUEUE_TIMEOUT = 20  # a spawn that finds every CPU busy fails soon
SLURM_CONFIG = f"""
c.RemoteSingularitySpawner.placement = "slurm"
c.RemoteSingularitySpawner.slurm_partitions = {{"debug": {{"cpus": 2, "time": "0:30:00"}}, "small": {{}}}}
c.RemoteSingularitySpawner.slurm_default_resources = {{"cpus": 1, "memory": "512M", "time": "0:10:00"}}
c.Spawner.poll_interval = {POLL}
c.Spawner.start_timeout = {START_TIMEOUT}
c.RemoteSingularitySpawner.slurm_queue_timeout = {QUEUE_TIMEOUT}
"""
ASK = {"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"}
USERS = ("rss-alice", "rss-bob")


@pytest.fixture(scope="module")
def slurm(cluster):
    slurm_cluster.up()
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture(scope="module")
def slurm_hub(slurm, cluster, tmp_path_factory):
    h = make_hub(cluster, tmp_path_factory.mktemp("slurm-hub"), offset=200, extra_config=SLURM_CONFIG)
    h.cleanup_servers = False  # a restart keeps the servers; the fixture stops them itself
    h.start()
    for user in (*USERS, "rss-carol"):
        h.ensure_user(user)
    yield h
    for user in USERS:
        for name in list(h.api("GET", f"/users/{user}").json().get("servers") or {}):
            h.stop_server(user, name)
    h.stop()


@pytest.fixture
def hub(slurm_hub, slurm):
    """The Slurm Hub, with every job and server of the previous test gone."""
    yield slurm_hub
    for user in USERS:
        for name in list(slurm_hub.api("GET", f"/users/{user}").json().get("servers") or {}):
            slurm_hub.stop_server(user, name)
    slurm.cancel_all()


def running_jobs(user):
    return [j for j in slurm_cluster.jobs(user) if j["state"] == "RUNNING"]


def squeue_all(user) -> str:
    """Every job of *user* slurmctld still knows, ended ones included (MinJobAge)."""
    return subprocess.run(
        ["squeue", "-h", "-t", "all", "-u", user, "-o", "%i %T"],
        env={**slurm_cluster.env(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def server_environ(node, user) -> dict:
    """The environment of the user's server process on *node*."""
    (server,) = servers_of(node, user)
    environ = cluster_mod.node_run(node, ["cat", f"/proc/{server['pid']}/environ"]).stdout
    return dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)


def job_of_server(node, user) -> str:
    """SLURM_JOB_ID in the environment of the user's server process on *node*."""
    return server_environ(node, user).get("SLURM_JOB_ID", "")


def test_a_server_runs_inside_the_users_job_and_is_reached_through_the_proxy(hub):
    r = hub.spawn("rss-alice", options=ASK)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("rss-alice")
    assert hub.through_proxy("rss-alice").status_code == 200
    (job,) = slurm_cluster.jobs("rss-alice")
    assert job["state"] == "RUNNING" and job["partition"] == "debug"
    assert job_of_server(job["node"], "rss-alice") == job["id"]


def test_named_servers_of_two_users_on_both_nodes_by_partition_and_by_host(hub):
    assert hub.spawn("rss-alice", "one", {**ASK, "host": "rss-node1"}).status_code in (201, 202)
    assert hub.spawn("rss-bob", "two", {**ASK, "partition": "small"}).status_code in (201, 202)
    hub.wait_ready("rss-alice", "one")
    hub.wait_ready("rss-bob", "two")
    assert hub.through_proxy("rss-alice", "one").status_code == 200
    assert hub.through_proxy("rss-bob", "two").status_code == 200
    (alice,), (bob,) = running_jobs("rss-alice"), running_jobs("rss-bob")
    assert (alice["node"], bob["node"]) == ("rss-node1", "rss-node2")
    assert job_of_server("rss-node1", "rss-alice") == alice["id"]
    assert job_of_server("rss-node2", "rss-bob") == bob["id"]


def test_a_job_with_a_gpu_runs_on_the_gpu_node_with_its_devices_and_nv(hub):
    """No gpu_nodes in the Hub's configuration: Slurm's GRES alone puts the job and gives --nv."""
    r = hub.spawn("rss-alice", options={**ASK, "gpus": 1, "gpu_type": slurm_cluster.GPU_TYPE})
    assert r.status_code in (201, 202), r.text
    model = hub.wait_ready("rss-alice")
    (job,) = running_jobs("rss-alice")
    assert job["node"] == slurm_cluster.GPU_NODE, job
    environ = server_environ(job["node"], "rss-alice")
    assert environ.get("CUDA_VISIBLE_DEVICES") in ("0", "1"), "Slurm's GPU reached the server"
    log = cluster_mod.node_run(job["node"], ["cat", model["state"]["log_path"]]).stdout
    assert "Could not find any nv files on this host!" in log, "--nv reached the runtime"
    assert hub.through_proxy("rss-alice").status_code == 200


def test_a_server_ends_with_its_time_limit_and_the_hub_says_so_within_a_poll(hub):
    hub.spawn("rss-alice", options={**ASK, "time": 1})
    hub.wait_ready("rss-alice")
    (job,) = running_jobs("rss-alice")
    node = job["node"]
    assert wait_until(lambda: not running_jobs("rss-alice"), timeout=150, interval=0.5)
    ended = time.monotonic()
    assert wait_until(lambda: hub.server_model("rss-alice") is None, timeout=POLL + 5, interval=0.2)
    noticed = time.monotonic() - ended
    assert noticed <= POLL + 3, f"the Hub noticed after {noticed:.1f} s"
    assert wait_until(lambda: nothing_left(node, "rss-alice"), timeout=20)
    assert wait_until(lambda: not slurm_cluster.jobs("rss-alice"), timeout=20)


def test_an_admins_scancel_is_noticed_within_two_polls(hub):
    hub.spawn("rss-alice", options=ASK)
    hub.wait_ready("rss-alice")
    (job,) = running_jobs("rss-alice")
    subprocess.run(["scancel", job["id"]], env={**slurm_cluster.env(), "PATH": "/usr/bin:/bin"}, check=True)
    cancelled = time.monotonic()
    assert wait_until(lambda: hub.server_model("rss-alice") is None, timeout=2 * POLL + 5, interval=0.2)
    assert time.monotonic() - cancelled <= 2 * POLL + 2
    assert wait_until(lambda: nothing_left(job["node"], "rss-alice"), timeout=20)


def test_stop_leaves_no_process_and_no_job_and_a_second_stop_is_harmless(hub):
    hub.spawn("rss-alice", options=ASK)
    hub.wait_ready("rss-alice")
    (job,) = running_jobs("rss-alice")
    hub.stop_server("rss-alice")
    assert not slurm_cluster.jobs("rss-alice")
    assert wait_until(lambda: nothing_left(job["node"], "rss-alice"), timeout=10)
    again = hub.api("DELETE", hub.server_path("rss-alice"))
    assert again.status_code in (204, 400, 404), again.text
    assert hub.server_model("rss-alice") is None


def test_with_every_cpu_busy_a_spawn_says_it_is_queued_and_why_then_fails_and_its_job_is_gone(hub, slurm):
    slurm.fill("rss-carol")
    r = hub.spawn("rss-alice", options=ASK)
    assert r.status_code == 202, r.text
    events = hub.progress_events("rss-alice", timeout=START_TIMEOUT + 30)
    messages = [e.get("message", "") for e in events]
    assert any(m.startswith("queued in partition debug: Resources") for m in messages), messages
    assert events[-1].get("failed"), events[-1]
    assert "still queued in partition debug: Resources" in events[-1]["message"]
    assert "was cancelled" in events[-1]["message"]
    assert not slurm.jobs("rss-alice")


def test_a_job_queued_longer_than_start_timeout_starts_within_the_queue_timeout(alt_hub, hub, slurm):
    """start_timeout is the server's own start: the wait in the queue has slurm_queue_timeout."""
    server_timeout = 15
    h = alt_hub(
        SLURM_CONFIG + f"c.Spawner.start_timeout = {server_timeout}\n"
        "c.RemoteSingularitySpawner.slurm_queue_timeout = 300\n"
    )
    slurm.fill("rss-carol")
    r = h.spawn("rss-alice", options=ASK)
    assert r.status_code == 202, r.text
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        progress = pool.submit(h.progress_events, "rss-alice", "", 300)
        time.sleep(server_timeout + 10)
        assert [j["state"] for j in slurm.jobs("rss-alice")] == ["PENDING"]
        assert not progress.done(), progress.result()
        slurm.cancel_all("rss-carol")
        events = progress.result()
    assert events[-1].get("ready"), events[-1]
    messages = [e.get("message", "") for e in events]
    assert "waiting in the queue for a node, up to 5 min (slurm_queue_timeout)" in messages, messages
    waited = next(m for m in messages if m.startswith("waited "))
    assert waited.endswith(f"the server now has up to {server_timeout} s to start (start_timeout)"), waited
    assert int(waited.split()[1]) >= server_timeout + 10, waited
    assert h.through_proxy("rss-alice").status_code == 200
    h.stop_server("rss-alice")
    assert wait_until(lambda: not slurm.jobs("rss-alice"), timeout=20), slurm.jobs("rss-alice")


@pytest.mark.parametrize("options, field", BAD_VALUES)
def test_a_bad_value_is_refused_with_a_400_naming_the_field_and_sbatch_never_ran(hub, options, field):
    before = squeue_all("rss-bob")
    r = hub.spawn("rss-bob", options={**ASK, **options})
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(f"Cannot start your server: {field} "), r.json()
    assert squeue_all("rss-bob") == before
    assert hub.server_model("rss-bob") is None


def test_a_gpu_type_the_partition_has_not_is_refused_naming_it_and_sbatch_never_ran(hub):
    before = squeue_all("rss-bob")
    r = hub.spawn("rss-bob", options={**ASK, "gpus": 1, "gpu_type": "a100"})
    assert r.status_code == 400, r.text
    expected = f"gpu_type 'a100' is not a GPU type of partition debug: {slurm_cluster.GPU_TYPE}"
    assert r.json()["message"] == f"Cannot start your server: {expected}", r.json()
    assert squeue_all("rss-bob") == before
    assert hub.server_model("rss-bob") is None


def test_a_restarted_hub_keeps_polls_and_stops_slurm_servers(hub):
    hub.spawn("rss-alice", options=ASK)
    hub.wait_ready("rss-alice")
    (job,) = running_jobs("rss-alice")
    hub.stop()
    hub.start()
    model = hub.server_model("rss-alice")
    assert model and model["ready"], model
    assert hub.through_proxy("rss-alice").status_code == 200
    time.sleep(POLL + 1)  # at least one poll of the restarted Hub
    assert hub.server_model("rss-alice") is not None
    assert [j["id"] for j in running_jobs("rss-alice")] == [job["id"]]
    hub.stop_server("rss-alice")
    assert not slurm_cluster.jobs("rss-alice")
    assert wait_until(lambda: nothing_left(job["node"], "rss-alice"), timeout=10)


def test_the_form_shows_the_partitions_with_their_idle_nodes_and_cpus(hub):
    page = login(hub, "rss-alice").get(f"{hub.url}/hub/spawn", timeout=30).text
    assert 'name="partition"' in page
    assert "debug" in page and "small" in page
    assert "nodes idle" in page and "CPUs idle" in page
    gpus = slurm_cluster.GPU_COUNT
    assert f"{gpus}/{gpus} GPUs free ({slurm_cluster.GPU_TYPE})" in page
    assert f'<option value="{slurm_cluster.GPU_TYPE}">' in page


def test_a_count_that_is_not_a_number_is_refused_naming_the_field(hub):
    message = spawn_failure(hub, "rss-bob", {**ASK, "cpus": "many"})
    assert message.startswith("Cannot start your server: cpus ")


def test_a_failed_node_ends_its_server_and_its_job(hub, slurm):
    hub.spawn("rss-bob", options={**ASK, "partition": "small"})
    hub.wait_ready("rss-bob")
    (job,) = running_jobs("rss-bob")
    assert job["node"] == "rss-node2"
    cluster_mod.kill_node("rss-node2")
    try:
        failed = time.monotonic()
        assert wait_until(lambda: hub.server_model("rss-bob") is None, timeout=2 * POLL + 15, interval=0.2)
        assert time.monotonic() - failed <= 2 * POLL + 5
        # The Hub cancelled the job: no job holds the dead node's allocation (no requeue either).
        assert wait_until(lambda: not slurm.jobs("rss-bob"), timeout=30), slurm.jobs("rss-bob")
    finally:
        cluster_mod.start_node("rss-node2")
        slurm.up()
