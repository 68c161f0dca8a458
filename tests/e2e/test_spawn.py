"""End to end: a real Hub, configurable-http-proxy and sshd nodes.

Every test drives the Hub through its REST API, as a user's browser or
jupyterhub-idle-culler would, and looks at the nodes from inside them.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import cluster as cluster_mod
import pytest
from conftest import login, nothing_left, servers_of, spawn_failure, user_processes, wait_until

NODE1, NODE2 = "rss-node1", "rss-node2"


def node_token(node: str, pid: int) -> str:
    environ = cluster_mod.node_run(node, ["cat", f"/proc/{pid}/environ"]).stdout
    match = re.search(r"JUPYTERHUB_API_TOKEN=([^\0]+)", environ)
    assert match, "the server has no API token in its environment"
    return match.group(1)


@pytest.mark.parametrize(
    "user, node",
    [("rss-alice", NODE1), ("rss-bob", NODE2), ("rss-carol", NODE1)],
    ids=["ed25519-node1", "ecdsa-node2", "rsa-node1"],
)
def test_spawn_on_chosen_node_reachable_through_proxy_and_stop_leaves_nothing(hub, user, node):
    other = NODE2 if node == NODE1 else NODE1
    r = hub.spawn(user, options={"host": node})
    assert r.status_code in (201, 202), r.text
    model = hub.wait_ready(user)
    assert model["user_options"]["host"] == node

    # Through configurable-http-proxy to the server on the node.
    status = hub.through_proxy(user)
    assert status.status_code == 200, status.text
    assert "last_activity" in status.json()

    # The server lives on the chosen node, as the user, and nowhere else.
    servers = servers_of(node, user)
    assert len(servers) == 1, user_processes(node, user)
    assert servers_of(other, user) == []
    node_ip = cluster_mod.describe().node(node).ip
    assert model["url"] == f"/user/{user}/"
    state = model["state"]  # the spawner's state, visible with admin:server_state
    assert state["node"] == node and state["address"] == node_ip
    listening = cluster_mod.node_run(node, ["ss", "-Htln"]).stdout
    assert f"{node_ip}:{state['port']} " in listening, listening

    # The API token is in no argv on the node or the hub, and not in the Hub's log.
    token = node_token(node, servers[0]["pid"])
    for n in (NODE1, NODE2):
        assert not [p for p in cluster_mod.node_processes(n) if token in p["args"]]
    hub_argvs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert token not in hub_argvs
    assert token not in hub.log_path.read_text(errors="replace")

    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)
    assert hub.through_proxy(user).status_code != 200


def test_named_servers_on_both_nodes_at_once(hub):
    user = "rss-alice"
    for name, node in (("left", NODE1), ("right", NODE2)):
        r = hub.spawn(user, name, {"host": node})
        assert r.status_code in (201, 202), r.text
    for name in ("left", "right"):
        hub.wait_ready(user, name)
    assert len(servers_of(NODE1, user)) == 1
    assert len(servers_of(NODE2, user)) == 1
    assert hub.through_proxy(user, "left").status_code == 200
    assert hub.through_proxy(user, "right").status_code == 200

    hub.stop_server(user, "left")
    assert wait_until(lambda: servers_of(NODE1, user) == [])
    assert len(servers_of(NODE2, user)) == 1, "stopping one server left the other alone"
    hub.stop_server(user, "right")
    assert wait_until(lambda: nothing_left(NODE1, user) and nothing_left(NODE2, user))


@pytest.mark.parametrize(
    "config, says",
    [
        (
            'c.RemoteSingularitySpawner.singularity_container_path = "/opt/rss-cluster/images/nope.sif"',
            "could not open image /opt/rss-cluster/images/nope.sif",
        ),
        ('c.Spawner.cmd = ["no-such-server"]', '"no-such-server": executable file not found in $PATH'),
    ],
    ids=["image-missing", "command-missing"],
)
def test_a_server_that_cannot_start_fails_fast_with_the_log_tail(alt_hub, config, says):
    hub = alt_hub(config)
    message = spawn_failure(hub, "rss-alice", {"host": NODE2})
    assert "did not start" in message
    assert "last lines of" in message and says in message
    assert hub.server_model("rss-alice") is None
    assert wait_until(lambda: nothing_left(NODE2, "rss-alice"))


def test_a_server_that_dies_is_noticed_by_poll_and_cleaned_up(hub):
    user, node = "rss-carol", NODE2
    hub.spawn(user, options={"host": node})
    model = hub.wait_ready(user)
    cluster_mod.node_run(node, ["kill", "-KILL", str(model["state"]["pid"])])
    # poll_interval is 3 s in this Hub: check_pid.sh must report it gone.
    assert wait_until(lambda: hub.server_model(user) is None, timeout=60), hub.server_model(user)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)


def test_an_edited_copy_of_the_scripts_is_uploaded_as_a_new_version(cluster, alt_hub, tmp_path):
    from remotesingularityspawner import remote

    copy = tmp_path / "site-scripts"
    shutil.copytree(remote.packaged_scripts_dir(), copy)
    with open(copy / "start_singleuser.sh", "a") as f:
        f.write("# edited by the site's sysadmin\n")
    version = remote.ScriptBundle.load(copy).version
    hub = alt_hub(f'c.RemoteSingularitySpawner.scripts_dir = "{copy}"')
    user = "rss-alice"
    hub.spawn(user, options={"host": NODE1})
    model = hub.wait_ready(user)
    assert model["state"]["scripts_version"] == version
    uploaded = cluster.user(user).home / ".remote-singularity-spawner" / "scripts" / version
    assert (uploaded / "start_singleuser.sh").read_text().endswith("# edited by the site's sysadmin\n")
    assert oct(uploaded.stat().st_mode & 0o777) == "0o700"
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(NODE1, user))


def test_the_form_offers_the_nodes_and_starts_what_was_chosen(hub):
    user = "rss-carol"
    session = login(hub, user)
    form = session.get(f"{hub.url}/hub/spawn/{user}", timeout=30).text
    action = re.search(r'action="(/hub/spawn/[^"]+)"', form).group(1)
    options = re.findall(r'<option value="([^"]+)"( selected)?', form)
    assert options == [(NODE1, " selected"), (NODE2, "")]
    assert 'name="binds"' in form

    r = session.post(
        f"{hub.url}{html.unescape(action)}",
        data={"host": NODE2, "binds": "/tmp\n/var/tmp:/mnt:ro"},
        timeout=90,
    )
    assert r.ok, r.text[-2000:]
    model = hub.wait_ready(user)
    # The same user_options as the REST API takes.
    assert model["user_options"] == {"host": NODE2, "binds": ["/tmp", "/var/tmp:/mnt:ro"]}
    server = servers_of(NODE2, user)
    assert len(server) == 1
    mounts = cluster_mod.node_run(NODE2, ["cat", f"/proc/{server[0]['pid']}/mounts"]).stdout
    assert " /mnt " in mounts, "the bind reached singularity"
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(NODE2, user))


def test_missing_bind_source_fails_fast_naming_it(hub):
    message = spawn_failure(hub, "rss-alice", {"host": NODE1, "binds": ["/no/such/dir:/mnt"]})
    assert "mount source /no/such/dir doesn't exist" in message
    assert wait_until(lambda: nothing_left(NODE1, "rss-alice"))


def test_site_configuration_apptainer_default_binds_and_extra_args(cluster, alt_hub):
    """apptainer works like singularity; default binds and extra exec flags reach the runtime."""
    hub = alt_hub(
        f'c.RemoteSingularitySpawner.singularity_exe_path = "{cluster.apptainer}"\n'
        'c.RemoteSingularitySpawner.default_bind_path = "/var/tmp:/mnt:ro"\n'
        'c.RemoteSingularitySpawner.singularity_args = ["--pid"]\n'
    )
    user, node = "rss-bob", NODE1
    hub.spawn(user, options={"host": node})
    model = hub.wait_ready(user)
    processes = {p["pid"]: p for p in cluster_mod.node_processes(node)}
    parent = processes[model["state"]["pid"]]
    assert parent["comm"] == "Apptainer runti", parent
    assert "--ro-bind /var/tmp /mnt" in " ".join(p["args"] for p in processes.values())
    server = servers_of(node, user)
    assert len(server) == 1
    mounts = cluster_mod.node_run(node, ["cat", f"/proc/{server[0]['pid']}/mounts"]).stdout
    assert " /mnt " in mounts
    status = cluster_mod.node_run(node, ["cat", f"/proc/{server[0]['pid']}/status"]).stdout
    assert re.search(r"^NSpid:\s+\d+\s+\d+", status, re.M), "--pid: the server runs in its own PID namespace"
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user))


def test_disabled_host_key_checking_connects_but_says_so_loudly(cluster, alt_hub, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hub = alt_hub(
        f'c.RemoteSingularitySpawner.known_hosts_files = ["{empty}"]\n'
        "c.RemoteSingularitySpawner.disable_host_key_checking = True\n"
    )
    hub.spawn("rss-alice", options={"host": NODE2})
    hub.wait_ready("rss-alice")
    log = hub.log_path.read_text()
    assert "host key checking is disabled" in log
    assert re.search(r"\[W .*host key checking is DISABLED: accepting .* of 10\.213\.47\.12", log)
    hub.stop_server("rss-alice")
