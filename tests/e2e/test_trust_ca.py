"""deploy --trust-ca on the test cluster: the nodes' sshd trusts the Hub's CA; --untrust-ca: no more.

Each node has its own /etc/ssh (cluster.py), so deploy runs with its default
paths as on a real host. Certificates are made here with cryptography's
builder, independently of the spawner's code, and used with paramiko.
"""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import cluster as cluster_mod
import paramiko
import pytest
import test_deploy_on_nodes
from conftest import make_hub, wait_until
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh
from test_deploy_on_nodes import admin, invoke, make_ca, node_wide, row, sshd_state  # noqa: F401 - a fixture

NODE1, NODE2 = "rss-node1", "rss-node2"
USER = "rss-alice"
CA_FILE = "remote-singularity-spawner_ca.pub"  # in /etc/ssh on the node
DROP_IN = "sshd_config.d/50-remote-singularity-spawner.conf"
# deploy also installs the scripts node-wide: gone before and after each test.
pytestmark = pytest.mark.usefixtures("node_wide")
# Each node's /etc/ssh, no CA trusted before and after: a fixture shared with the dry-run test there.
etc_ssh = test_deploy_on_nodes.etc_ssh


@pytest.fixture
def ca(tmp_path):
    return make_ca(tmp_path / "ca", "rss-test-ca")


def certificate_key(ca_path, principal: str, key_id: str) -> paramiko.PKey:
    """A fresh key in memory with a user certificate signed by the CA at *ca_path*."""
    authority = serialization.load_ssh_private_key(ca_path.read_bytes(), password=None)
    user_key = ed25519.Ed25519PrivateKey.generate()
    now = int(time.time())
    certificate = (
        ssh.SSHCertificateBuilder()
        .public_key(user_key.public_key())
        .serial(secrets.randbits(64))
        .type(ssh.SSHCertificateType.USER)
        .key_id(key_id.encode())
        .valid_principals([principal.encode()])
        .valid_after(now - 60)
        .valid_before(now + 300)
        .sign(authority)
    )
    pem = user_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))
    pkey.load_certificate(certificate.public_bytes().decode())
    return pkey


def whoami(cluster, node: str, pkey: paramiko.PKey, user: str = USER) -> str:
    """`id -un` on *node* over SSH as *user* with *pkey*; the error's text if the login fails."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(cluster.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(cluster.node(node).ip, username=user, pkey=pkey, allow_agent=False,
                       look_for_keys=False, timeout=10)  # fmt: skip
        _, stdout, _ = client.exec_command("id -un", timeout=30)
        return stdout.read().decode().strip()
    except (OSError, paramiko.SSHException) as e:
        return f"login failed: {type(e).__name__}: {e}"
    finally:
        client.close()


def logs_in(cluster, node: str, pkey: paramiko.PKey) -> bool:
    """The login works (sshd may be re-executing itself after a reload: a few tries)."""
    return wait_until(lambda: whoami(cluster, node, pkey) == USER, timeout=10, interval=0.5)


def deploy(cluster, *args):
    """`invoke deploy` to every node with the cluster's image: (exit code, output)."""
    return invoke(cluster, "deploy", "--image", str(cluster.image), *args)


def user_key(cluster) -> paramiko.PKey:
    return paramiko.PKey.from_path(str(cluster.user(USER).private_key))


def snapshot(etc_ssh):
    """Every path under the nodes' /etc/ssh with its inode, owner, mode, mtime and content."""
    return {
        str(p): (p.lstat().st_ino, p.lstat().st_uid, oct(p.lstat().st_mode), p.lstat().st_mtime_ns,
                 p.read_bytes() if p.is_file() else None)
        for d in etc_ssh.values()
        for p in sorted(d.rglob("*"))
    }  # fmt: skip


def test_deploy_makes_the_nodes_trust_the_ca_and_a_certificate_logs_in(cluster, etc_ssh, ca, tmp_path):
    pub = f"{ca}.pub"
    key = certificate_key(ca, USER, "rss-test certificate-1")
    assert whoami(cluster, NODE1, key).startswith("login failed"), "no node trusts the CA yet"

    code, out = invoke(cluster, "check", "--image", str(cluster.image), "--trust-ca", pub)
    assert code == 1, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-2:] == ["NO", "NO"], out
        assert f"{node}: sshd does not trust the CA: sshd trusts no user CA" in out
    assert (
        f"{NODE1}: sshd does not trust the CA: sshd trusts no user CA: no TrustedUserCAKeys in "
        "/etc/ssh/sshd_config or its drop-ins: run remote-singularity-spawner deploy"
    ) in out, "the command an admin has, not invoke"
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", pub], capture_output=True, text=True).stdout
    assert f"CA {fingerprint.split()[1]} from {pub}, sshd config /etc/ssh/sshd_config" in out

    before = snapshot(etc_ssh)
    code, out = deploy(cluster, "--trust-ca", pub, "--dry-run")
    assert code == 0, out
    assert row(out, NODE1)[-3:] == ["would", "trust", "yes"], out
    assert (
        f"{NODE1}: note: CA: would add the key to /etc/ssh/{CA_FILE} and write /etc/ssh/{DROP_IN}, "
        "check with sshd -t and reload sshd"
    ) in out
    assert snapshot(etc_ssh) == before, "--dry-run changes nothing"

    code, out = deploy(cluster, "--trust-ca", pub)
    assert code == 0, out
    for node, d in etc_ssh.items():
        assert row(out, node)[-3:] == ["INSTALLED", "TRUSTED", "yes"], out
        assert f"{node}: note: CA: added the key to /etc/ssh/{CA_FILE} and wrote /etc/ssh/{DROP_IN}, " in out
        assert (d / CA_FILE).read_text().split() == Path(pub).read_text().split()
        assert (d / DROP_IN).read_text() == f"TrustedUserCAKeys /etc/ssh/{CA_FILE}\n"
        for path in (d / CA_FILE, d / DROP_IN):
            assert (path.stat().st_uid, oct(path.stat().st_mode & 0o777)) == (0, "0o644")
        assert logs_in(cluster, node, key), whoami(cluster, node, key)
        log = cluster.node(node).sshd_log.read_text(errors="replace")
        assert 'Accepted certificate ID "rss-test certificate-1"' in log
    assert (cluster.node(NODE1).etc_ssh / "sshd_config").read_text().count("TrustedUserCAKeys") == 0, (
        "the main config is not edited"
    )

    before, sshd = snapshot(etc_ssh), {n: sshd_state(cluster, n) for n in etc_ssh}
    code, out = deploy(cluster, "--trust-ca", pub)
    assert code == 0, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-3:] == ["current", "yes", "yes"], out
    assert snapshot(etc_ssh) == before, "a second deploy writes nothing"
    assert {n: sshd_state(cluster, n) for n in etc_ssh} == sshd, "and reloads no sshd"

    # The CA from the Hub config (its private key; the spawner's setting), as `check` reads it.
    config = make_hub(cluster, tmp_path / "hub").write_config()
    config.write_text(config.read_text() + f"c.RemoteSingularitySpawner.ssh_ca_key_file = {str(ca)!r}\n")
    code, out = invoke(cluster, "check", "--config", str(config))
    assert code == 0, out
    assert f"CA {fingerprint.split()[1]} from {ca}, sshd config /etc/ssh/sshd_config" in out
    for node in (NODE1, NODE2):
        assert row(out, node)[-2:] == ["yes", "yes"], out


def test_a_second_ca_is_trusted_beside_the_first_for_a_rotation(cluster, etc_ssh, ca, tmp_path):
    new = make_ca(tmp_path / "new-ca", "rss-test-ca-2")
    for authority in (ca, new):
        code, out = deploy(cluster, "--trust-ca", f"{authority}.pub")
        assert code == 0, out
    assert len((etc_ssh[NODE2] / CA_FILE).read_text().splitlines()) == 2
    for authority in (ca, new):
        assert logs_in(cluster, NODE2, certificate_key(authority, USER, f"rss-test {authority.name}"))


def test_a_broken_drop_in_target_leaves_sshd_working_and_says_why(cluster, etc_ssh, ca, tmp_path):
    pub = f"{ca}.pub"
    node1 = etc_ssh[NODE1]
    # A CA file of an earlier key: the key would be added to it, then the drop-in cannot be written.
    old = make_ca(tmp_path / "old-ca", "rss-old-ca")
    shutil.copyfile(f"{old}.pub", node1 / CA_FILE)
    (node1 / CA_FILE).chmod(0o644)
    (node1 / DROP_IN).mkdir()
    before, sshd = snapshot({NODE1: node1}), sshd_state(cluster, NODE1)

    code, out = deploy(cluster, "--trust-ca", pub)
    assert code == 1, out
    assert row(out, NODE1)[-2:] == ["NO", "NO"] and row(out, NODE2)[-2:] == ["TRUSTED", "yes"], out
    assert (
        f"{NODE1}: sshd does not trust the CA: cannot write /etc/ssh/{DROP_IN}: it is a directory; "
        "nothing changed"
    ) in out
    assert snapshot({NODE1: node1}) == before, "the CA file is back: the same inode, content and mtime"
    assert sshd_state(cluster, NODE1) == sshd
    assert whoami(cluster, NODE1, user_key(cluster)) == USER, "sshd still answers"

    # Another drop-in sshd refuses: nothing is written and sshd is not reloaded.
    (node1 / DROP_IN).rmdir()
    (node1 / "sshd_config.d" / "10-broken.conf").write_text("Nonsense yes\n")
    before = snapshot({NODE1: node1})
    code, out = deploy(cluster, "--trust-ca", pub)
    assert code == 1, out
    assert row(out, NODE1)[-2:] == ["NO", "NO"], out
    assert (
        f"{NODE1}: sshd does not trust the CA: sshd -t -f /etc/ssh/sshd_config fails already, so sshd "
        "was not touched: /etc/ssh/sshd_config.d/10-broken.conf: line 1: Bad configuration option: Nonsense"
    ) in out
    assert snapshot({NODE1: node1}) == before
    assert sshd_state(cluster, NODE1) == sshd
    assert whoami(cluster, NODE1, user_key(cluster)) == USER, "sshd still answers"


def test_a_node_without_an_include_is_told_the_line_to_add(cluster, etc_ssh, ca):
    config = etc_ssh[NODE2] / "sshd_config"
    config.write_text("".join(line for line in config.read_text().splitlines(True) if "Include" not in line))
    cluster_mod.restart_sshd(NODE2)
    before = snapshot(etc_ssh)
    code, out = deploy(cluster, "--trust-ca", f"{ca}.pub", "--dry-run")
    assert code == 1, out
    assert row(out, NODE2)[-2:] == ["NO", "NO"], out
    assert (
        f"{NODE2}: sshd does not trust the CA: /etc/ssh/sshd_config includes no drop-in directory: "
        "add the line 'Include /etc/ssh/sshd_config.d/*.conf' at its top, then deploy again"
    ) in out
    assert snapshot(etc_ssh) == before


def test_a_certificate_spawn_works_once_deploy_made_the_nodes_trust_the_ca(cluster, etc_ssh, ca, alt_hub):
    code, out = deploy(cluster, "--trust-ca", f"{ca}.pub")
    assert code == 0, out
    offset = len(cluster.node(NODE2).sshd_log.read_text(errors="replace"))
    # No home is read in certificate mode: the nodes' host keys from the cluster's list.
    settings = {
        "ssh_auth": "certificate",
        "ssh_ca_key_file": str(ca),
        "known_hosts_files": [str(cluster.known_hosts)],
    }
    hub = alt_hub("".join(f"c.RemoteSingularitySpawner.{k} = {v!r}\n" for k, v in settings.items()))
    hub.spawn(USER, options={"host": NODE2})
    hub.wait_ready(USER)
    assert hub.through_proxy(USER).status_code == 200
    hub.stop_server(USER)
    log = cluster.node(NODE2).sshd_log.read_text(errors="replace")[offset:]
    assert f'Accepted certificate ID "remote-singularity-spawner hub-user={USER} ' in log, log[-3000:]


def test_untrust_ca_refuses_that_cas_certificates_at_once_and_keeps_the_other(cluster, etc_ssh, ca, tmp_path):
    other = make_ca(tmp_path / "ca-b", "rss-test-ca-b")
    for authority in (ca, other):
        code, out = deploy(cluster, "--trust-ca", f"{authority}.pub")
        assert code == 0, out
    key_a = certificate_key(ca, USER, "rss-test certificate-a")
    key_b = certificate_key(other, USER, "rss-test certificate-b")
    for node in (NODE1, NODE2):
        assert logs_in(cluster, node, key_a) and logs_in(cluster, node, key_b)
    sshd = {n: sshd_state(cluster, n) for n in etc_ssh}

    code, out = admin(cluster, "deploy", "--image", str(cluster.image), "--untrust-ca", f"{ca}.pub")
    assert code == 0, out
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{ca}.pub"], capture_output=True, text=True)
    assert f"untrusting CA {fingerprint.stdout.split()[1]} from {ca}.pub" in out
    for node, d in etc_ssh.items():
        assert row(out, node)[-4:] == ["current", "-", "REMOVED", "yes"], out
        assert (
            f"{node}: note: untrust CA: removed the key from /etc/ssh/{CA_FILE} "
            "(sshd reads it at each login: no reload needed)"
        ) in out
        assert (d / CA_FILE).read_text().split() == Path(f"{other}.pub").read_text().split()
        # At once: no waiting for a reload, for there is none.
        assert whoami(cluster, node, key_a).startswith("login failed"), "A's certificate is refused"
        assert whoami(cluster, node, key_b) == USER, "B's still logs in"
    assert {n: sshd_state(cluster, n) for n in etc_ssh} == sshd, "the same sshd (PID), not even reloaded"

    before = snapshot(etc_ssh)
    code, out = admin(cluster, "deploy", "--image", str(cluster.image), "--untrust-ca", f"{ca}.pub")
    assert code == 0, out
    for node in (NODE1, NODE2):
        assert row(out, node)[-5:] == ["current", "-", "not", "trusted", "yes"], out
    assert snapshot(etc_ssh) == before, "untrusting again changes nothing"
