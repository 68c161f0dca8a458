"""Certificate mode: what each login's certificate says, and bad settings refused before any login."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificateType
from fakes import reply

from remotesingularityspawner import remote
from remotesingularityspawner.remote import certificates


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "ssh_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    os.chmod(path, 0o600)
    return path


def certificate_of(pkey):
    """The certificate paramiko offers with *pkey*, parsed by cryptography."""
    blob = pkey.public_blob
    return load_ssh_public_identity(f"{blob.key_type} {base64.b64encode(blob.key_blob).decode()}".encode())


def test_a_login_certificate_names_the_login_the_hub_user_and_the_server(ca_file):
    request = remote.CertificateRequest(
        str(ca_file), "alice", remote.key_id("alice@example.org", "gpu", "alice"), 300, ("10.0.0.1/32",)
    )
    before = int(time.time())
    first, second = certificate_of(request.login_key()), certificate_of(request.login_key())
    assert first.type == SSHCertificateType.USER
    assert first.valid_principals == [b"alice"]
    assert first.key_id == b"remote-singularity-spawner hub-user=alice@example.org server=gpu login=alice"
    assert before - 61 <= first.valid_after <= before - 59, "a minute of clock skew"
    assert first.valid_before - first.valid_after == 300 + 60
    assert first.extensions == {}, "no pty, agent, X11 or port forwarding"
    assert first.critical_options == {b"source-address": b"10.0.0.1/32"}
    assert first.serial != second.serial, "a random serial"
    assert first.public_key().public_bytes_raw() != second.public_key().public_bytes_raw(), "a fresh key each"
    ca_public = certificates.CertificateAuthority.load(str(ca_file)).key.public_key().public_bytes_raw()
    assert first.signature_key().public_bytes_raw() == ca_public
    first.verify_cert_signature()


def test_without_source_addresses_there_is_no_critical_option(ca_file):
    key = remote.CertificateRequest(str(ca_file), "bob", "id").login_key()
    assert certificate_of(key).critical_options == {}


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_ecdsa_and_rsa_cas_sign_too(tmp_path, key_type):
    path = tmp_path / f"ca_{key_type}"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True)
    certificate_of(remote.CertificateRequest(str(path), "bob", "id").login_key()).verify_cert_signature()


def _encrypted(path):
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(path)], check=True)


@pytest.mark.parametrize(
    "spoil, says",
    [
        (lambda p: p.unlink(), "does not exist: make one with `ssh-keygen -t ed25519 -f"),
        (lambda p: os.chmod(p, 0o640), "readable or writable by group or others (mode 0640): "),
        (lambda p: os.chmod(p, 0o604), "(mode 0604)"),
        (_encrypted, "protected by a passphrase"),
        (lambda p: p.write_text("not a key\n"), "is not an OpenSSH private key"),
        (lambda p: (p.unlink(), p.mkdir(mode=0o700)), "cannot be read"),
    ],
    ids=["missing", "group-readable", "other-readable", "encrypted", "garbage", "a-directory"],
)
def test_an_unusable_ca_key_is_refused_saying_why_and_how_to_fix_it(ca_file, spoil, says):
    secret = ca_file.read_text()
    spoil(ca_file)
    with pytest.raises(remote.CAError) as e:
        remote.CertificateRequest(str(ca_file), "alice", "id").login_key()
    assert str(ca_file) in str(e.value) and says in str(e.value)
    assert secret.splitlines()[1] not in str(e.value), "never the key's content"
    assert e.value.setting == "ssh_ca_key_file"


@pytest.mark.parametrize("validity", [29, 86401, 0, -5])
def test_a_validity_out_of_range_is_refused(ca_file, validity):
    with pytest.raises(remote.ValidityError, match=f"{validity} seconds is outside 30 s to 24 h"):
        remote.CertificateRequest(str(ca_file), "alice", "id", validity).login_key()


def test_a_new_ca_key_is_used_at_once(ca_file):
    first = certificate_of(remote.CertificateRequest(str(ca_file), "a", "id").login_key())
    ca_file.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca_file)], check=True)
    second = certificate_of(remote.CertificateRequest(str(ca_file), "a", "id").login_key())
    assert first.signature_key().public_bytes_raw() != second.signature_key().public_bytes_raw()


# --- the spawner in certificate mode ---------------------------------------------------------


def cert_spawner(make_spawner, ca_file, **traits):
    settings = {
        "nodelist": "n1:10.0.0.1,n2:10.0.0.2",
        "singularity_container_path": "/img.sif",
        "ssh_auth": "certificate",
        "ssh_ca_key_file": str(ca_file),
        "home_path": "/nonexistent-homes",
    }
    return make_spawner(**{**settings, **traits})


def node_answers(node):
    node.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    node.on("check_pid.sh", reply(running=True))
    node.on("stop.sh", reply(signal="TERM"))


async def test_certificate_mode_reads_no_home_and_logs_in_with_a_certificate_per_server(
    make_spawner, fake_ssh, ca_file
):
    node_answers(fake_ssh.node("10.0.0.1"))
    for name in ("", "gpu"):
        s = cert_spawner(make_spawner, ca_file, name=name)
        s.user_options = {"host": "n1"}
        assert await s.start() == ("10.0.0.1", 50000)
        assert await s.poll() is None
        await s.stop()
    targets = [c.target for c in fake_ssh.connections]
    assert [t.certificate.key_id for t in targets] == [
        "remote-singularity-spawner hub-user=alice server= login=alice",
        "remote-singularity-spawner hub-user=alice server=gpu login=alice",
    ], "one connection per server: sshd's log names the server of each login"
    for target in targets:
        assert target.key_files == () and target.known_hosts_files == ("/etc/ssh/ssh_known_hosts",)
        assert target.certificate.principal == "alice"
    assert len(fake_ssh.certificates) == 2


@pytest.mark.parametrize(
    "traits, says",
    [
        (
            {"ssh_ca_key_file": "/nonexistent/ca"},
            "c.RemoteSingularitySpawner.ssh_ca_key_file: /nonexistent/ca does not exist",
        ),
        (
            {"ssh_certificate_validity": 10},
            "c.RemoteSingularitySpawner.ssh_certificate_validity: 10 seconds is outside",
        ),
    ],
)
async def test_bad_certificate_settings_fail_the_spawn_naming_the_setting_before_any_login(
    make_spawner, fake_ssh, ca_file, traits, says, caplog
):
    # The user reads that the CA is not usable; the Hub's log names the setting, the path, the fix.
    s = cert_spawner(make_spawner, ca_file, **traits)
    s.user_options = {"host": "n1"}
    with pytest.raises(Exception) as e:
        await s.start()
    assert e.value.jupyterhub_message == (
        "Cannot start your server on n1: the Hub's SSH certificate authority is not usable; "
        "the administrators have been told"
    )
    assert says in caplog.text
    assert fake_ssh.connections == [], "no SSH login attempted"


async def test_an_unusable_ca_is_logged_once_not_at_every_poll(make_spawner, fake_ssh, ca_file, caplog):
    s = cert_spawner(make_spawner, ca_file)
    s.load_state(
        {"pid": 9, "start_time": 5, "port": 1, "node": "n1", "address": "10.0.0.1", "login": "alice"}
    )
    s.probe_port = lambda *a: None
    os.chmod(ca_file, 0o644)
    with caplog.at_level(logging.DEBUG):
        for _ in range(4):
            assert await s.poll() is None  # within the grace period
    logged = [r for r in caplog.records if "mode 0644" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(logged) == 1, [r.getMessage() for r in logged]
