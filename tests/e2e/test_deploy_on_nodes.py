"""check / deploy against the test cluster, then a spawn that uses what was deployed.

Most tests run them as `invoke check|deploy` (the clone's tasks), some as the console
script `remote-singularity-spawner` that pip installed: the same tasks behind another
command line (spawner/admin/cli.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import cluster as cluster_mod
import jupyterhub
import pytest
from conftest import make_hub, nothing_left, wait_until

from remotesingularityspawner import remote

ROOT = Path(__file__).resolve().parents[2]
NODE1, NODE2 = "rss-node1", "rss-node2"
DOWN = "rss-node9:10.213.47.19"  # in the cluster's range, no node there
VERSION = remote.ScriptBundle.load(remote.packaged_scripts_dir()).version
# Where pip put the console script for this Python (`invoke test` installs the package first).
ADMIN_COMMAND = Path(sysconfig.get_path("scripts")) / "remote-singularity-spawner"


@pytest.fixture
def node_wide(cluster):
    """Each node's node-wide directory, as the host sees it; emptied before and after."""
    sources = {n.name: cluster.node_wide_source(n.name) for n in cluster.nodes}

    def clean():
        for source in sources.values():
            for entry in source.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    clean()
    yield sources
    clean()


@pytest.fixture
def etc_ssh(cluster):
    """Each node's /etc/ssh as the host sees it, as up() made it (no CA trusted); so again after."""
    cluster_mod.untrust_ca()
    yield {n.name: n.etc_ssh for n in cluster.nodes}
    cluster_mod.untrust_ca()


def invoke(cluster, task, *args, hosts=None, known_hosts=None):
    """Run `invoke TASK` in the clone as an admin would (root's key, the cluster's known_hosts).

    Without --config among *args*, the nodes are *hosts* (default: all) and
    the runtime is the cluster's. (exit code, output)
    """
    command = [sys.executable, "-m", "invoke", "-r", str(ROOT), task]
    return _run_admin(command, cluster, args, hosts, known_hosts)


def admin(cluster, task, *args, hosts=None, known_hosts=None):
    """Run `remote-singularity-spawner TASK`, the console script, as invoke() runs the task."""
    assert ADMIN_COMMAND.exists(), f"no {ADMIN_COMMAND}: pip install the package first (invoke test does)"
    return _run_admin([str(ADMIN_COMMAND), task], cluster, args, hosts, known_hosts)


def _run_admin(command, cluster, args, hosts, known_hosts):
    if "--config" not in args:
        hosts = hosts or ",".join(f"{n.name}:{n.ip}" for n in cluster.nodes)
        args = ("--hosts", hosts, "--exe", str(cluster.singularity), *args)
    argv = [
        *command,
        "--user", "root",
        "--key", str(cluster.root_key),
        "--known-hosts", str(known_hosts or cluster.known_hosts),
        "--timeout", "3",
        *args,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr


def make_ca(path, comment):
    """A CA key pair at *path* (and *path*.pub), as ssh-keygen makes it."""
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    subprocess.run(argv, check=True)
    return path


def sshd_state(cluster, node: str) -> tuple[str, int]:
    """The main sshd's PID (inside the node) and how often it was reloaded (SIGHUP)."""
    n = cluster.node(node)
    reloads = n.sshd_log.read_text(errors="replace").count("Received SIGHUP")
    return n.sshd_pid_file.read_text().strip(), reloads


def answers(ip):
    """Something accepts connections on ip:22."""
    try:
        socket.create_connection((ip, 22), timeout=1).close()
        return True
    except OSError:
        return False


def row(output, node):
    """The table row of *node*, split into cells (NODE (ip) SSH... as words)."""
    return next(line.split() for line in output.splitlines() if line.startswith(f"{node} "))


def snapshot(sources):
    """Every path under the directories (node-wide, or /etc/ssh) with its inode, owner, mode and mtime."""
    found = {}
    for source in sources.values():
        for path in sorted(source.rglob("*")):
            st = path.lstat()
            found[str(path)] = (st.st_ino, st.st_uid, oct(st.st_mode), st.st_mtime_ns)
    return found


def test_deploy_installs_once_and_the_spawn_then_uploads_nothing(cluster, node_wide, alt_hub):
    image = ["--image", str(cluster.image)]
    code, out = invoke(cluster, "check", *image)
    assert code == 0, out
    assert row(out, NODE1)[-3:] == ["missing", "-", "yes"] and row(out, NODE2)[-3:] == ["missing", "-", "yes"]
    assert "singularity-ce 3.11.5-standin" in " ".join(row(out, NODE1))

    code, out = invoke(cluster, "deploy", *image, "--dry-run")
    assert code == 0, out
    assert row(out, NODE1)[-4:-2] == ["would", "install"], out
    assert snapshot(node_wide) == {}, "--dry-run changed nothing"

    code, out = invoke(cluster, "deploy", *image)
    assert code == 0, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-3:] == ["INSTALLED", "-", "yes"], out
    for source in node_wide.values():
        installed = source / "scripts" / VERSION
        assert sorted(p.name for p in installed.iterdir()) == sorted(remote.SCRIPT_FILES)
        assert installed.stat().st_uid == 0 and oct(installed.stat().st_mode & 0o777) == "0o755"
        for script in installed.iterdir():
            assert script.stat().st_uid == 0 and oct(script.stat().st_mode & 0o777) == "0o644"
    before = snapshot(node_wide)

    code, out = invoke(cluster, "deploy", *image)
    assert code == 0, out
    assert row(out, NODE1)[-3:] == ["current", "-", "yes"] and row(out, NODE2)[-3:] == ["current", "-", "yes"]
    assert snapshot(node_wide) == before, "a second deploy changes nothing"

    user = "rss-alice"
    own_copy = cluster.user(user).home / ".remote-singularity-spawner" / "scripts" / VERSION
    shutil.rmtree(own_copy, ignore_errors=True)
    hub = alt_hub("")
    hub.spawn(user, options={"host": NODE2})
    model = hub.wait_ready(user)
    assert model["state"]["scripts_version"] == VERSION
    assert hub.through_proxy(user).status_code == 200
    hub.stop_server(user)
    assert wait_until(lambda: nothing_left(NODE2, user))
    assert not own_copy.exists(), "no per-user upload"
    log = hub.log_path.read_text()
    assert f"bash {cluster.node_wide_dir}/scripts/{VERSION}/start_singleuser.sh" in log
    assert f"bash {cluster.node_wide_dir}/scripts/{VERSION}/stop.sh" in log
    assert "uploaded scripts" not in log


def test_check_says_which_node_lacks_the_image_and_which_is_down(cluster, node_wide):
    # The image only on node1: its node-wide directory is its own.
    images = node_wide[NODE1] / "images"
    images.mkdir(mode=0o755)
    shutil.copyfile(cluster.image, images / "jupyter.sif")
    (images / "jupyter.sif").chmod(0o644)
    image = f"{cluster.node_wide_dir}/images/jupyter.sif"
    hosts = ",".join([*(f"{n.name}:{n.ip}" for n in cluster.nodes), DOWN])

    code, out = invoke(cluster, "check", "--image", image, hosts=hosts)
    assert code == 1, out
    assert row(out, NODE1)[-4:] == ["ok", "missing", "-", "yes"], out
    assert row(out, NODE2)[-4:] == ["MISSING", "missing", "-", "NO"], out
    assert row(out, "rss-node9")[2] == "DOWN" and row(out, "rss-node9")[-1] == "NO", out
    assert f"{NODE2}: image {image}: missing" in out
    assert "rss-node9: cannot connect to root@10.213.47.19:22" in out
    assert f"not fit for servers: {NODE2}, rss-node9" in out
    assert snapshot({NODE2: node_wide[NODE2]}) == {}, "check installs nothing"


def test_check_refuses_a_node_whose_host_key_is_unknown(cluster, tmp_path):
    node = cluster.node(NODE1)
    hosts = f"{NODE1}:{node.ip}"
    code, out = invoke(cluster, "check", "--image", str(cluster.image), hosts=hosts)
    assert code == 0, out
    # The same known_hosts with node1's key listed for another address only.
    known = tmp_path / "known_hosts"
    known.write_text(cluster.known_hosts.read_text().replace(f",{node.ip} ", ",10.213.47.99 "))
    code, out = invoke(cluster, "check", "--image", str(cluster.image), hosts=hosts, known_hosts=known)
    assert code == 1, out
    assert row(out, NODE1)[2:4] == ["HOST", "KEY"], out
    assert "is not in known_hosts: refusing to connect" in out


def test_check_reads_nodes_runtime_and_image_from_the_hub_config(cluster, tmp_path):
    config = make_hub(cluster, tmp_path / "hub").write_config()
    code, out = invoke(cluster, "check", "--config", str(config))
    assert code == 0, out
    assert f"image {cluster.image}, runtime {cluster.singularity}" in out
    for node in cluster.nodes:
        assert row(out, node.name)[:4] == [node.name, f"({node.ip})", "ok", "(root)"], out
        assert row(out, node.name)[-1] == "yes", out


def test_check_and_deploy_report_a_node_whose_sshd_is_stopped(cluster, node_wide):
    node2 = cluster.node(NODE2)
    listener = int(node2.sshd_pid_file.read_text().split()[0])  # a PID inside the node
    cluster_mod.node_run(NODE2, ["kill", "-TERM", str(listener)])
    try:
        assert wait_until(lambda: not answers(node2.ip), timeout=10)
        code, out = invoke(cluster, "deploy", "--image", str(cluster.image))
        assert code == 1, out
        assert row(out, NODE1)[-3:] == ["INSTALLED", "-", "yes"], out
        assert row(out, NODE2)[2] == "DOWN" and row(out, NODE2)[-1] == "NO", out
        assert f"{NODE2}: cannot connect to root@{node2.ip}:22:" in out
        assert not (node_wide[NODE2] / "scripts").exists()
    finally:
        cluster_mod.restart_sshd(NODE2)


def test_check_lists_every_image_of_the_config_with_its_jupyterhub(cluster, tmp_path):
    images = [{"name": name, "path": str(path)} for name, path in cluster.images.items()]
    extra = f"c.RemoteSingularitySpawner.images = {images!r}\n"
    config = make_hub(cluster, tmp_path / "hub", extra_config=extra).write_config()
    code, out = invoke(cluster, "check", "--config", str(config))
    assert code == 1, out  # the image of another major version: its servers would be refused
    ours, versions = jupyterhub.__version__, cluster.image_versions
    for node in cluster.nodes:
        cells = " ".join(row(out, node.name))
        assert "2/3 ok (SEE BELOW)" in cells and cells.endswith(" NO"), out
        assert (
            f"{node.name}: image jupyter ({cluster.images['jupyter']}): present, readable, "
            f"JupyterHub {ours}, matches the Hub"
        ) in out
        assert (
            f"{node.name}: image jupyter-minor ({cluster.images['jupyter-minor']}): present, readable, "
            f"JupyterHub {versions['jupyter-minor']}, another minor version than the Hub's"
        ) in out
        assert (
            f"{node.name}: image jupyter-major ({cluster.images['jupyter-major']}) carries JupyterHub "
            f"{versions['jupyter-major']}, the Hub runs {ours}: install jupyterhub=={ours} in it"
        ) in out


def test_deploy_dry_run_changes_nothing_where_deploy_would_change_everything(
    cluster, node_wide, etc_ssh, tmp_path
):
    """The console script's --dry-run: scripts to install, a CA to trust and one to untrust."""
    image = ["--image", str(cluster.image)]
    old, new = make_ca(tmp_path / "old-ca", "rss-old-ca"), make_ca(tmp_path / "new-ca", "rss-new-ca")
    code, out = admin(cluster, "deploy", *image, "--trust-ca", f"{old}.pub")
    assert code == 0, out
    for source in node_wide.values():  # the scripts to install again
        shutil.rmtree(source / "scripts")
    files = {**{f"{n} /etc/ssh": d for n, d in etc_ssh.items()}, **node_wide}
    before, sshd = snapshot(files), {n: sshd_state(cluster, n) for n in etc_ssh}
    for name in ("sshd_config", "remote-singularity-spawner_ca.pub", "50-remote-singularity-spawner.conf"):
        assert sum(path.endswith(f"/{name}") for path in before) == 2, f"{name} on each node: the old CA"

    code, out = admin(cluster, "deploy", *image, "--trust-ca", f"{new}.pub", "--untrust-ca", f"{old}.pub",
                      "--dry-run")  # fmt: skip
    assert code == 0, out
    assert "(dry run: nothing changed)" in out
    for node in (NODE1, NODE2):
        assert row(out, node)[-7:] == ["would", "install", "would", "trust", "would", "remove", "yes"], out
        assert f"{node}: note: CA: would add the key to /etc/ssh/remote-singularity-spawner_ca.pub" in out
        assert f"{node}: note: untrust CA: would remove the key from /etc/ssh/" in out
    assert snapshot(files) == before, "sshd_config, the drop-in, the CA file, the scripts: the same inodes"
    assert {n: sshd_state(cluster, n) for n in etc_ssh} == sshd, "sshd: the same PID, not reloaded"
    assert all((d / "remote-singularity-spawner_ca.pub").read_text().split()[:2]
               == Path(f"{old}.pub").read_text().split()[:2] for d in etc_ssh.values())  # fmt: skip
