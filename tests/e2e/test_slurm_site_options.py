"""Site options per partition on the test cluster's real Slurm: the account, QOS, reservation
and constraint a user chooses reach the job as Slurm records it (``scontrol show job``), and
hostile or unoffered values are 400s with nothing submitted.

What the test cluster (tests/slurm_cluster.py) gives them: node features rack1,ib on
rss-node1 and rack2,ib on rss-node2 for the constraint. It has no Slurm accounting
(slurmdbd): slurmctld then keeps no QOS for a job (``QOS=(null)``), so the QOS test is
skipped, saying so; the account needs nothing (slurmctld keeps the name it is given). The
reservation is made here, as root, with ``scontrol create reservation``.
"""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import cluster as cluster_mod
import pytest
import slurm_cluster
from conftest import login, make_hub, wait_until

POLL = 3
PWNED = "/tmp/rss-site-pwned"  # a canary: no value may create it, on the hub or a node
RESERVATION = "rss-maint"
SITE_CONFIG = f"""
c.RemoteSingularitySpawner.placement = "slurm"
c.RemoteSingularitySpawner.slurm_partitions = {{
    "debug": {{"accounts": ["proj1", "proj2"], "qos": ["normal"], "reservations": True,
              "constraint": ["rack1&ib", "[rack1|rack2]", "ib"]}},
    "small": {{"cpus": 2}},
}}
c.RemoteSingularitySpawner.slurm_default_resources = {{"cpus": 1, "memory": "512M", "time": "0:10:00"}}
c.Spawner.poll_interval = {POLL}
c.Spawner.start_timeout = 30
"""
ASK = {"partition": "debug", "cpus": 1, "memory": "512M", "time": "0:10:00"}
USERS = ("rss-alice", "rss-bob")


def _slurm(*argv: str) -> subprocess.CompletedProcess:
    env = {**slurm_cluster.env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


def job_record(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``: the job as slurmctld keeps it, field -> value."""
    out = _slurm("scontrol", "show", "job", "-o", job_id)
    assert out.returncode == 0, out.stderr
    return dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)


def squeue_all(user: str) -> str:
    """Every job of *user* slurmctld still knows, ended ones included (MinJobAge)."""
    return _slurm("squeue", "-h", "-t", "all", "-u", user, "-o", "%i %T").stdout


def require_features() -> None:
    """Skip unless slurm.conf gives the nodes the features the tests ask for."""
    features = _slurm("sinfo", "-h", "-N", "-o", "%N %f").stdout
    if "rack1" not in features or "rack2" not in features:
        pytest.skip("slurm.conf gives the nodes no Features= (rack1,ib on rss-node1; rack2,ib on rss-node2)")


def require_accounting() -> None:
    """Skip unless Slurm keeps accounts (slurmdbd): without it a job has no QOS."""
    if "accounting_storage/slurmdbd" not in _slurm("scontrol", "show", "config").stdout:
        pytest.skip("no Slurm accounting (slurmdbd): slurmctld keeps no QOS for a job")


def clear(h) -> None:
    """Stop every server of the test users and cancel every job: the next test starts clean."""
    for user in USERS:
        for name in h.api("GET", f"/users/{user}").json().get("servers") or {}:
            h.stop_server(user, name)
    slurm_cluster.cancel_all()


@pytest.fixture(scope="module")
def site_hub(cluster, tmp_path_factory):
    """A Hub whose partitions offer site options, on the test cluster's Slurm."""
    slurm_cluster.up()
    slurm_cluster.cancel_all()
    h = make_hub(cluster, tmp_path_factory.mktemp("slurm-site-hub"), offset=250, extra_config=SITE_CONFIG)
    h.start()
    for user in USERS:
        h.ensure_user(user)
    try:
        yield h
    finally:
        h.stop()
        slurm_cluster.cancel_all()


@pytest.fixture
def hub(site_hub):
    yield site_hub
    clear(site_hub)


def spawned_job(hub, user: str, options: dict) -> dict[str, str]:
    """Spawn with *options*, wait until the server is ready; the job's record in slurmctld."""
    r = hub.spawn(user, options={**ASK, **options})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)
    (job,) = [j for j in slurm_cluster.jobs(user) if j["state"] == "RUNNING"]
    return {**job_record(job["id"]), "node": job["node"]}


def test_the_account_chosen_reaches_the_job(hub):
    record = spawned_job(hub, "rss-alice", {"account": "proj2"})
    assert record["Account"] == "proj2"
    assert hub.through_proxy("rss-alice").status_code == 200


@pytest.mark.parametrize("constraint, nodes", [("rack1&ib", {"rss-node1"}), ("[rack1|rack2]", None)])
def test_the_constraint_chosen_reaches_the_job_and_picks_its_node(hub, constraint, nodes):
    require_features()
    record = spawned_job(hub, "rss-alice", {"account": "proj1", "constraint": constraint})
    assert record["Features"] == constraint
    assert record["Account"] == "proj1"
    if nodes is not None:
        assert record["node"] in nodes


def test_the_qos_chosen_reaches_the_job(hub):
    require_accounting()
    record = spawned_job(hub, "rss-alice", {"qos": "normal"})
    assert record["QOS"] == "normal"


@pytest.fixture
def reservation(site_hub):
    made = _slurm(
        "scontrol", "create", "reservation", f"ReservationName={RESERVATION}", "Users=rss-alice",
        "Nodes=rss-node2", "StartTime=now", "Duration=30", "Flags=IGNORE_JOBS",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    yield RESERVATION
    clear(site_hub)  # a reservation in use cannot be deleted
    deleted = _slurm("scontrol", "delete", f"ReservationName={RESERVATION}")
    assert deleted.returncode == 0, deleted.stderr


def test_the_reservation_typed_reaches_the_job_and_its_node(hub, reservation):
    record = spawned_job(hub, "rss-alice", {"reservation": reservation})
    assert record["Reservation"] == reservation
    assert record["node"] == "rss-node2"


HOSTILE = [
    ({"account": f"proj1;touch {PWNED}"}, "account"),
    ({"account": f"--wrap=touch {PWNED}"}, "account"),
    ({"account": "-A"}, "account"),
    ({"qos": "normal\nid"}, "qos"),
    ({"reservation": f"$(touch {PWNED})"}, "reservation"),
    ({"constraint": f"ib&`touch {PWNED}`"}, "constraint"),
    ({"constraint": "rack1|!ib"}, "constraint"),
    ({"constraint": "a" * 300}, "constraint"),
    ({"account": "prøj"}, "account"),
    ({"account": ["proj1"]}, "account"),
    # Well formed, but not what the partition offers:
    ({"account": "proj3"}, "account"),
    ({"constraint": "rack2"}, "constraint"),
    ({"partition": "small", "account": "proj1"}, "account"),
    ({"partition": "small", "constraint": "ib"}, "constraint"),
]


def refusal_without_a_job(hub, user: str, options: dict) -> str:
    """The message of the 400 a spawn with *options* gets; no job was submitted, no server made."""
    jobs_before = squeue_all(user)
    r = hub.spawn(user, options={**ASK, **options})
    assert (r.status_code, squeue_all(user)) == (400, jobs_before), r.text
    assert hub.server_model(user) is None
    return r.json()["message"]


@pytest.mark.parametrize("options, field", HOSTILE)
def test_a_hostile_or_unoffered_site_option_is_a_400_naming_it_and_nothing_is_submitted(hub, options, field):
    message = refusal_without_a_job(hub, "rss-bob", options)
    assert message.startswith(f"Cannot start your server: {field} "), message
    assert not Path(PWNED).exists()
    for node in ("rss-node1", "rss-node2"):
        assert cluster_mod.node_run(node, ["test", "-e", PWNED], check=False).returncode != 0


def test_the_form_offers_the_selected_partitions_options_and_its_choice_reaches_the_job(hub):
    session = login(hub, "rss-alice")
    page = session.get(f"{hub.url}/hub/spawn/rss-alice", timeout=30).text
    assert '<div class="row rss-site" data-partition="debug">' in page
    assert '<option value="proj2">proj2</option>' in page
    assert '<option value="rack1&amp;ib">rack1&amp;ib</option>' in page
    for field in ("account", "qos", "reservation", "constraint"):
        assert page.count(f'name="{field}"') == 1, f"only debug offers {field}; small offers none"
    fields = {**ASK, "account": "proj1", "qos": "", "reservation": "", "constraint": ""}
    action = html.unescape(re.search(r'action="(/hub/spawn/[^"]+)"', page).group(1))  # with its _xsrf
    r = session.post(f"{hub.url}{action}", data=fields, timeout=120)
    assert r.ok, r.text[-2000:]
    hub.wait_ready("rss-alice")
    assert wait_until(lambda: slurm_cluster.jobs("rss-alice"), timeout=20)
    (job,) = slurm_cluster.jobs("rss-alice")
    assert job_record(job["id"])["Account"] == "proj1"
