"""End to end: what a new user notices on a site messier than the tidy test users.

Real HPC sites have start-up files that talk (module systems, welcome
messages) on stdout and on stderr for every shell sshd starts, login shells
other than bash, sshd without an SFTP subsystem, and homes that are full or
read-only. The test cluster has each of them (see tests/cluster.py):
rss-bash, rss-tcsh and rss-zsh with banners, a second sshd on every node
without SFTP (``CONFIG.nosftp_port``), and rss-rohome, whose home is root's.

The spawner sends its scripts and files over the command channel only: no
SFTP session, so no sftp-server of the user is kept alive on a kept
connection, and a node without SFTP works like any other.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cluster as cluster_mod
import paramiko
import pytest
from conftest import nothing_left, servers_of, spawn_failure, user_processes, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE1 = "rss-node1"
BANNER_USERS = ["rss-bash", "rss-tcsh", "rss-zsh"]
ROHOME = "rss-rohome"
# What sshd logs (LogLevel VERBOSE) when a client asks for the sftp subsystem.
SFTP_REQUEST = re.compile(r"subsystem request for sftp|subsystem 'sftp'")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def command_sessions(path: Path, offset: int, user: str) -> int:
    """Command sessions *user* opened on that sshd since byte *offset* of its log."""
    return len(re.findall(rf"Starting session: command for {re.escape(user)} ", log_since(path, offset)))


@contextlib.contextmanager
def ssh_as(cluster, user: str, node: str = NODE1, port: int = 22):
    """A paramiko client logged in as *user* with the user's own key and known_hosts."""
    u = cluster.user(user)
    client = paramiko.SSHClient()
    client.load_host_keys(str(u.home / ".ssh" / "known_hosts"))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        cluster.node(node).ip,
        port=port,
        username=user,
        key_filename=str(u.private_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        yield client
    finally:
        client.close()


def exec_text(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=30)
    stdout, stderr = out.read().decode(), err.read().decode()
    return out.channel.recv_exit_status(), stdout, stderr


def spawn_answer_poll_stop(hub, user: str, node: str, sshd_log: Path) -> None:
    """Start on *node*, reach the server through the proxy, see the Hub's polls keep it, stop."""
    hub.ensure_user(user)
    offset = log_size(sshd_log)
    r = hub.spawn(user, options={"host": node})
    assert r.status_code in (201, 202), r.text
    model = hub.wait_ready(user)
    assert model["state"]["node"] == node

    status = hub.through_proxy(user)
    assert status.status_code == 200, status.text
    assert "last_activity" in status.json()
    assert len(servers_of(node, user)) == 1, user_processes(node, user)

    # Each poll is a command session on the node: after two more, the Hub still has it running.
    ready_at = command_sessions(sshd_log, offset, user)
    assert wait_until(lambda: command_sessions(sshd_log, offset, user) >= ready_at + 2, timeout=60), (
        "the Hub did not poll the server"
    )
    model = hub.server_model(user)
    assert model and model["ready"], f"the Hub's poll lost the server: {model}"
    assert hub.through_proxy(user).status_code == 200

    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)
    assert hub.through_proxy(user).status_code != 200


# --- start-up files that talk, login shells other than bash ----------------------------------


@pytest.mark.parametrize("user", BANNER_USERS)
def test_banners_of_the_login_shell_do_not_break_a_spawn_poll_or_stop(cluster, hub, user):
    # The site is as messy as claimed: every command prints both banners around its output.
    with ssh_as(cluster, user) as client:
        code, out, err = exec_text(client, "echo hi")
    assert code == 0 and out.endswith("hi\n") and cluster_mod.BANNER_STDOUT in out, out
    assert cluster_mod.BANNER_STDERR in err, err
    assert cluster.user(user).shell.endswith("/" + user.removeprefix("rss-"))

    # No copy of the scripts from an earlier run: this spawn sends them through the banners.
    shutil.rmtree(cluster.user(user).home / ".remote-singularity-spawner" / "scripts", ignore_errors=True)
    spawn_answer_poll_stop(hub, user, NODE1, cluster.node(NODE1).sshd_log)


# --- a node without SFTP ---------------------------------------------------------------------


def test_a_node_without_sftp_runs_servers_like_any_other(cluster, alt_hub):
    node = cluster.node(NODE1)
    port = cluster_mod.CONFIG.nosftp_port
    user = "rss-alice"
    # There is no SFTP on that port, while commands run.
    with ssh_as(cluster, user, port=port) as client:
        with pytest.raises((paramiko.SSHException, EOFError)):
            client.open_sftp()
        assert exec_text(client, "echo hi")[:2] == (0, "hi\n")

    hub = alt_hub(
        f"c.RemoteSingularitySpawner.ssh_port = {port}\n"
        f'c.RemoteSingularitySpawner.nodelist = "{node.name}:{node.ip}"\n'
        "c.Spawner.poll_interval = 3\n"
    )
    shutil.rmtree(cluster.user(user).home / ".remote-singularity-spawner" / "scripts", ignore_errors=True)
    offset = log_size(node.nosftp_sshd_log)
    spawn_answer_poll_stop(hub, user, NODE1, node.nosftp_sshd_log)
    assert f"Accepted publickey for {user}" in log_since(node.nosftp_sshd_log, offset), (
        f"the Hub did not use port {port}"
    )


def test_a_spawn_poll_and_stop_open_no_sftp_session(cluster, hub):
    """No sftp-server of the user is kept alive on the Hub's kept connection."""
    user, node = "rss-alice", NODE1
    log = cluster.node(node).sshd_log
    # A fresh login, whatever the Hub's connection to this node did before.
    cluster_mod.restart_sshd(node, drop_sessions=True)
    shutil.rmtree(cluster.user(user).home / ".remote-singularity-spawner" / "scripts", ignore_errors=True)
    offset = log_size(log)

    hub.spawn(user, options={"host": node})
    hub.wait_ready(user)
    assert hub.through_proxy(user).status_code == 200
    ready_at = command_sessions(log, offset, user)
    assert wait_until(lambda: command_sessions(log, offset, user) >= ready_at + 2, timeout=60)
    sftp = [p for p in user_processes(node, user) if "sftp" in p["args"]]
    assert sftp == [], f"an sftp process of {user} on the kept connection: {sftp}"
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)

    since = log_since(log, offset)
    assert f"Accepted publickey for {user}" in since and f"command for {user}" in since
    requests = [line for line in since.splitlines() if SFTP_REQUEST.search(line) and user in line]
    assert requests == [], "\n".join(requests)


# --- a home the user cannot write ------------------------------------------------------------


def assert_home_untouched(cluster):
    home = cluster.user(ROHOME).home
    assert sorted(p.name for p in home.iterdir()) == [".ssh"], "nothing could be created in it"


def test_a_read_only_home_fails_saying_so(cluster, hub):
    hub.ensure_user(ROHOME)
    message = spawn_failure(hub, ROHOME, {"host": NODE1})
    assert NODE1 in message, message
    assert "Permission denied" in message, message
    assert "full" in message and "read-only" in message, message
    assert hub.server_model(ROHOME) is None
    assert wait_until(lambda: nothing_left(NODE1, ROHOME)), user_processes(NODE1, ROHOME)
    assert_home_untouched(cluster)


def deploy_on(cluster, node: str) -> str:
    """`invoke deploy` of the scripts on *node*, as an admin runs it (see test_deploy_on_nodes.py)."""
    n = cluster.node(node)
    argv = [
        sys.executable, "-m", "invoke", "-r", str(ROOT), "deploy",
        "--user", "root", "--key", str(cluster.root_key), "--known-hosts", str(cluster.known_hosts),
        "--timeout", "3", "--hosts", f"{n.name}:{n.ip}", "--exe", str(cluster.singularity),
        "--image", str(cluster.image),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def node1_wide_kept(cluster, tmp_path):
    """rss-node1's node-wide directory, emptied for the test and left as it was found."""
    source = cluster.node_wide_source(NODE1)
    aside = tmp_path / "node-wide-aside"
    aside.mkdir()
    for entry in source.iterdir():
        shutil.move(entry, aside / entry.name)
    try:
        yield source
    finally:
        for entry in source.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in aside.iterdir():
            shutil.move(entry, source / entry.name)


def test_a_read_only_home_with_node_wide_scripts_fails_saying_so(cluster, alt_hub, node1_wide_kept):
    out = deploy_on(cluster, NODE1)
    versions = [p.name for p in (node1_wide_kept / "scripts").iterdir()]
    assert len(versions) == 1, out

    # The Hub runs the scripts `invoke deploy` took (this checkout's), whatever is installed.
    hub = alt_hub(f'c.RemoteSingularitySpawner.scripts_dir = "{ROOT / "scripts"}"')
    hub.ensure_user(ROHOME)
    message = spawn_failure(hub, ROHOME, {"host": NODE1})
    assert NODE1 in message, message
    assert "Permission denied" in message, message
    assert "read-only" in message, message
    assert f".remote-singularity-spawner/scripts/{versions[0]}" not in message, "the scripts are on the node"
    assert hub.server_model(ROHOME) is None
    assert wait_until(lambda: nothing_left(NODE1, ROHOME)), user_processes(NODE1, ROHOME)
    assert_home_untouched(cluster)
