"""Certificate mode end to end: an unprivileged Hub, homes without keys, real sshd checks.

The Hub runs as the ordinary account rss-hub from a venv of Debian's Python
(/opt/rss-hub-venv), holds only a CA key, and logs in to the nodes with a
fresh key and a short-lived certificate per connection. The nodes trust the
CA through `invoke deploy --trust-ca`. The users' homes are 0700 and hold no
private key and no authorized_keys: only a certificate can log them in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cluster as cluster_mod
import paramiko
import pytest
from conftest import make_hub, nothing_left, servers_of, spawn_failure, user_processes, wait_until
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from harness import Hub
from test_deploy_on_nodes import invoke

from remotesingularityspawner import remote

ROOT = Path(__file__).resolve().parents[2]
NODE1, NODE2 = "rss-node1", "rss-node2"
HUB_ACCOUNT = "rss-hub"
HUB_VENV = Path("/opt/rss-hub-venv")
USERS = ("rss-cert1", "rss-cert2")
ACCEPTED_CERT = re.compile(r'Accepted certificate ID "([^"]*)" \(serial (\d+)\) signed by (\S+) CA')
ACCEPTED = re.compile(r"Accepted publickey for (\S+) from \S+ port \d+ ssh2: (\S+)")


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("spawner/**/*"), *ROOT.glob("scripts/*"), ROOT / "setup.cfg"]):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def hub_python():
    """A venv of Debian's Python with the pinned JupyterHub and this package, readable by all."""
    from importlib.metadata import version  # noqa: PLC0415

    python = HUB_VENV / "bin" / "python"
    want = f"jupyterhub=={version('jupyterhub')} {_source_digest()}"
    marker = HUB_VENV / ".rss-installed"
    if not python.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(HUB_VENV)], check=True)
    if not marker.exists() or marker.read_text() != want:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", want.split()[0], str(ROOT)],
            check=True, capture_output=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )  # fmt: skip
        marker.write_text(want)
    return str(python)


@pytest.fixture(scope="module")
def hub_account():
    if subprocess.run(["id", HUB_ACCOUNT], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", HUB_ACCOUNT], check=True)  # fmt: skip
    yield pwd.getpwnam(HUB_ACCOUNT)
    subprocess.run(["userdel", HUB_ACCOUNT], check=False)


@pytest.fixture(scope="module")
def keyless_users(cluster):
    """Users whose 0700 homes hold no private key and no authorized_keys."""
    users = [cluster_mod.add_user(name, "ed25519") for name in USERS]
    for user in users:
        for path in (user.private_key, user.public_key, user.home / ".ssh" / "authorized_keys"):
            path.unlink(missing_ok=True)
        os.chmod(user.home, 0o700)
    yield users
    for name in USERS:
        cluster_mod.remove_user(name)


def new_ca(workroot: Path, account, directory: str, name: str = "ssh_ca") -> Path:
    """A CA of its own in workroot/directory (the Hub account's), made by make_ca."""
    path = workroot / directory
    path.mkdir(exist_ok=True)
    os.chown(path, account.pw_uid, account.pw_gid)
    return make_ca(path, account, name)


def make_ca(directory: Path, account, name: str = "ssh_ca") -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rss-test-ca", "-f", str(path)],
                   check=True)  # fmt: skip
    os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def workroot(hub_account):
    """Where the unprivileged Hub lives (pytest's tmp is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="rss-cert-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def trusted_ca(cluster, workroot, hub_account):
    """The CA the nodes trust, installed by `invoke deploy --trust-ca` (and taken back after)."""
    ca_dir = workroot / "ca"
    ca_dir.mkdir()
    os.chown(ca_dir, hub_account.pw_uid, hub_account.pw_gid)
    ca = make_ca(ca_dir, hub_account)
    code, out = invoke(cluster, "deploy", "--image", str(cluster.image), "--trust-ca", f"{ca}.pub")
    assert code == 0, out
    yield ca
    untrust = getattr(cluster_mod, "untrust_ca", None)
    if untrust is not None:
        untrust()


def cert_hub(cluster, workroot, hub_account, hub_python, ca, name, offset, wrapper=(), **config) -> Hub:
    workdir = workroot / name
    lines = {
        "ssh_auth": '"certificate"',
        "ssh_ca_key_file": f'"{ca}"',
        "known_hosts_files": f'["{cluster.known_hosts}"]',
        **config,
    }
    extra = "c.Spawner.poll_interval = 3\n" + "".join(
        f"c.RemoteSingularitySpawner.{key} = {value}\n" for key, value in lines.items()
    )
    # make_hub's ports at offset 400 and up: clear of the session Hub's and alt_hub's.
    return make_hub(
        cluster, workdir, offset=400 + offset, cleanup_servers=False, extra_config=extra,
        python=hub_python, run_as=HUB_ACCOUNT, wrapper=wrapper,
    )  # fmt: skip


def sshd_log_since(node: str, offset: int) -> str:
    with open(cluster_mod.describe().node(node).sshd_log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_sizes() -> dict[str, int]:
    return {n.name: n.sshd_log.stat().st_size for n in cluster_mod.describe().nodes}


def hub_uid(hub: Hub) -> int:
    status = Path(f"/proc/{hub.process.pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


def test_an_unprivileged_hub_runs_servers_with_certificates_and_no_user_key(
    cluster, workroot, hub_account, hub_python, trusted_ca, keyless_users
):
    hub = cert_hub(cluster, workroot, hub_account, hub_python, trusted_ca, "hub", 0)
    sizes = log_sizes()
    hub.start()
    try:
        assert hub_uid(hub) == hub_account.pw_uid != 0, "the Hub runs as an ordinary account"
        for name in USERS:
            home = Path(pwd.getpwnam(name).pw_dir)
            assert oct(home.stat().st_mode & 0o777) == "0o700"
            assert not list((home / ".ssh").glob("id_*")) and not (home / ".ssh/authorized_keys").exists()
            hub.ensure_user(name)
        wanted = [(USERS[0], "", NODE1), (USERS[0], "gpu", NODE2), (USERS[1], "", NODE2)]
        for user, server, node in wanted:
            r = hub.spawn(user, server, options={"host": node})
            assert r.status_code in (201, 202), r.text
        for user, server, node in wanted:
            model = hub.wait_ready(user, server)
            assert model["state"]["node"] == node
            assert hub.through_proxy(user, server).status_code == 200
            assert servers_of(node, user), user_processes(node, user)

        # Each login is a certificate whose ID names the Hub user and the server; none a plain key.
        for node in (NODE1, NODE2):
            text = sshd_log_since(node, sizes[node])
            ids = ACCEPTED_CERT.findall(text)
            logins = [m for m in ACCEPTED.findall(text) if m[0] in USERS]
            assert logins and all(kind.endswith("-CERT") for _, kind in logins), logins
            assert len(ids) >= len(logins) // 2 and ids, text[-2000:]
            for user, server, where in wanted:
                if where == node:
                    key_id = f"remote-singularity-spawner hub-user={user} server={server} login={user}"
                    assert any(found == key_id for found, _, _ in ids), (key_id, ids)

        # A Hub restart keeps the servers, polls them from state, and stops them.
        time.sleep(4)  # a poll round of the first Hub
        hub.stop()
        hub.start()
        assert hub_uid(hub) == hub_account.pw_uid
        for user, server, _ in wanted:
            assert hub.server_model(user, server) is not None, "kept across the restart"
            assert hub.through_proxy(user, server).status_code == 200
        for user, server, _ in wanted:
            hub.stop_server(user, server)
        for user, _, node in wanted:
            assert wait_until(lambda u=user, n=node: nothing_left(n, u)), user_processes(node, user)
    finally:
        hub.stop()

    # The Hub wrote no private key material anywhere it could (its CA key aside).
    found = []
    for top in (workroot, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        for path in top.rglob("*"):
            try:
                if path.is_file() and path != trusted_ca and path.stat().st_uid == hub_account.pw_uid:
                    if b"PRIVATE KEY" in path.read_bytes():
                        found.append(path)
            except OSError:
                continue
    assert found == []
    assert "PRIVATE KEY" not in hub.log_path.read_text(), "the CA key is in no log"


def test_a_ca_the_nodes_do_not_trust_is_refused_naming_the_node_and_nothing_runs(
    cluster, workroot, hub_account, hub_python, trusted_ca, keyless_users
):
    other = new_ca(workroot, hub_account, "other-ca", "untrusted_ca")
    hub = cert_hub(cluster, workroot, hub_account, hub_python, other, "hub-untrusted", 10)
    hub.start()
    try:
        user = USERS[1]
        hub.ensure_user(user)
        sizes = log_sizes()
        message = spawn_failure(hub, user, {"host": NODE1})
        assert "Cannot start your server on rss-node1" in message
        assert "certificate of the Hub's CA" in message and "refused" in message
        assert "trust that CA" in message
        assert nothing_left(NODE1, user)
        assert "Accepted" not in sshd_log_since(NODE1, sizes[NODE1])
    finally:
        hub.stop()


class _Backdated(remote.CertificateRequest):
    """A request whose certificate the Hub made an hour ago: expired for the node."""

    def login_key(self, log=None, authorities=None):
        ca = remote.CertificateAuthority.load(self.ca_path)
        key = ed25519.Ed25519PrivateKey.generate()
        certificate = ca.sign(key.public_key(), self, now=time.time() - 3600)
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
        pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        pkey.load_certificate(certificate.public_bytes().decode())
        return pkey


@pytest.mark.parametrize("case", ["expired", "another-principal"])
def test_a_real_sshd_refuses_an_expired_certificate_or_another_principal_naming_node_and_causes(
    cluster, trusted_ca, keyless_users, case
):
    """What the spawner shows after "Cannot start your server on NODE:" for these refusals.

    The spawner never makes such a certificate itself (its principal is the login, its
    validity starts now): these are a Hub whose clock is wrong and a node whose account
    maps principals otherwise, made here at the SSH layer against the node's real sshd.
    """
    user = USERS[0]
    node = cluster_mod.describe().node(NODE2)
    kind, principal = (_Backdated, user) if case == "expired" else (remote.CertificateRequest, USERS[1])
    request = kind(str(trusted_ca), principal, remote.key_id(user, "", user))
    known = (str(cluster.known_hosts),)
    target = remote.Target(
        host=node.ip, username=user, key_files=(), known_hosts_files=known, certificate=request
    )
    sizes = log_sizes()
    with pytest.raises(remote.IdentityError) as e:
        remote.connect(target)
    message = str(e.value)
    assert f"login as {user}@{node.ip}:22 with a certificate of the Hub's CA" in message
    assert "refused" in message
    assert "principal" in message and "clocks" in message and "trust that CA" in message
    text = sshd_log_since(NODE2, sizes[NODE2])
    assert "Accepted" not in text
    assert ("expired" if case == "expired" else "not in principal list") in text.lower() or \
        "certificate invalid" in text.lower(), text[-1500:]  # fmt: skip
    assert nothing_left(NODE2, user)


SPAWN_AS_A_LATE_HUB = """
import asyncio, json, sys
from types import SimpleNamespace
from remotesingularityspawner import RemoteSingularitySpawner
user, nodelist, exe, image, ca, known = sys.argv[1:]
spawner = RemoteSingularitySpawner(
    user=SimpleNamespace(name=user, url=f"/user/{user}/", id=1), nodelist=nodelist,
    singularity_exe_path=exe, singularity_container_path=image, ssh_auth="certificate",
    ssh_ca_key_file=ca, known_hosts_files=[known],
)
spawner.get_env = lambda: {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0/user/x/"}
spawner.user_options = {"host": "rss-node2"}
try:
    asyncio.run(spawner.start())
except Exception as e:
    print(json.dumps({"type": type(e).__name__, "message": getattr(e, "jupyterhub_message", str(e))}))
"""


def test_a_hub_whose_clock_is_an_hour_late_gets_a_spawn_error_naming_node_and_clocks(
    cluster, trusted_ca, keyless_users
):
    """The spawner itself, its process's clock an hour late (faketime): its certificates are expired."""
    user = USERS[0]
    nodelist = ",".join(f"{n.name}:{n.ip}" for n in cluster.nodes)
    sizes = log_sizes()
    args = [user, nodelist, str(cluster.singularity), str(cluster.image), str(trusted_ca)]
    args.append(str(cluster.known_hosts))
    argv = ["faketime", "-f", "-1h", sys.executable, "-c", SPAWN_AS_A_LATE_HUB, *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    failure = json.loads(out.stdout.strip().splitlines()[-1])
    assert failure["type"] == "SpawnException", failure
    assert failure["message"].startswith("Cannot start your server on rss-node2: login as"), failure
    assert "refused" in failure["message"] and "clocks" in failure["message"]
    text = sshd_log_since(NODE2, sizes[NODE2])
    assert "Accepted" not in text and "expired" in text.lower(), text[-1500:]
    assert nothing_left(NODE2, user)


@pytest.mark.parametrize(
    "ca_change, setting",
    [
        (lambda p: p.unlink(), "ssh_ca_key_file"),
        (lambda p: os.chown(p, 0, 0), "ssh_ca_key_file"),
        (lambda p: os.chmod(p, 0o640), "ssh_ca_key_file"),
        (lambda p: subprocess.run(["ssh-keygen", "-q", "-p", "-N", "pw", "-P", "", "-f", str(p)], check=True),
         "ssh_ca_key_file"),
        (lambda p: p.write_text("-----BEGIN NONSENSE-----\n"), "ssh_ca_key_file"),
        ("validity=10", "ssh_certificate_validity"),
        ("validity=90000", "ssh_certificate_validity"),
    ],
    ids=["missing", "unreadable", "group-readable", "encrypted", "unknown-type", "validity-too-short",
         "validity-too-long"],  # fmt: skip
)
def test_a_bad_certificate_setting_fails_the_spawn_naming_it_before_any_login(
    cluster, workroot, hub_account, hub_python, keyless_users, ca_change, setting
):
    ca_dir = workroot / f"bad-{setting}-{time.monotonic_ns()}"
    ca_dir.mkdir()
    os.chown(ca_dir, hub_account.pw_uid, hub_account.pw_gid)
    ca = make_ca(ca_dir, hub_account)
    config = {}
    if isinstance(ca_change, str):
        config["ssh_certificate_validity"] = ca_change.split("=")[1]
    else:
        ca_change(ca)
    hub = cert_hub(cluster, workroot, hub_account, hub_python, ca, f"hub-bad-{ca_dir.name}", 30, **config)
    hub.start()
    try:
        user = USERS[0]
        hub.ensure_user(user)
        sizes = log_sizes()
        message = spawn_failure(hub, user, {"host": NODE1})
        # The user reads that the CA is unusable; the Hub's log names the setting and the fix.
        assert message.endswith(
            f"Cannot start your server on {NODE1}: the Hub's SSH certificate authority is not "
            "usable; the administrators have been told"
        ), message
        assert sshd_log_since(NODE1, sizes[NODE1]).count(user) == 0, "no SSH login attempted"
        assert hub.api("GET", "/").ok, "the Hub keeps serving"
        log = hub.log_path.read_text()
        assert f"c.RemoteSingularitySpawner.{setting}" in log
        assert "PRIVATE KEY" not in log
    finally:
        hub.stop()
