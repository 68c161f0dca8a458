"""The Python side of the script protocol: exit codes, stdin payload, replies."""

import re
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from remotesingularityspawner import remote

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_exit_code_table_matches_the_scripts_library():
    text = (SCRIPTS / "common.sh").read_text()
    in_bash = {name: int(code) for name, code in re.findall(r"readonly RSS_EXIT_(\w+)=(\d+)", text)}
    in_python = {code.name: int(code) for code in remote.ExitCode}
    assert in_bash == in_python
    assert not set(in_python.values()) & {1, 2, 126, 127, 255}
    assert all(v < 128 for v in in_python.values())


def test_env_payload_is_nul_separated_and_keeps_values_literally():
    env = {"JUPYTERHUB_API_TOKEN": "s3cr3t", "SCOPES": '["a b", "c"]', "MULTI": "x\ny $HOME `id`"}
    payload = remote.env_payload(env)
    records = payload.split("\0")
    assert records[-1] == ""
    assert records[:-1] == ["JUPYTERHUB_API_TOKEN=s3cr3t", 'SCOPES=["a b", "c"]', "MULTI=x\ny $HOME `id`"]


@pytest.mark.parametrize("key, value", [("BAD-KEY", "x"), ("1X", "x"), ("X", "a\0b"), ("A B", "x")])
def test_env_payload_refuses_what_the_script_cannot_read(key, value):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        remote.env_payload({key: value})


def test_payload_stream_hands_everything_over_in_one_read():
    stream = remote._Payload("A=1\0B=2\0")
    assert stream.read(1) == "A=1\0B=2\0"
    assert stream.read(1) == ""


@pytest.mark.parametrize(
    "stdout, data",
    [
        ('{"pid": 12, "port": 50001}\n', {"pid": 12, "port": 50001}),
        ('noise from a login script\n{"running": true}\n\n', {"running": True}),
        ("not json\n", {}),
        ("[1, 2]\n", {}),
        ("", {}),
    ],
)
def test_parse_reply(stdout, data):
    reply = remote.parse_reply(3, stdout, "  diagnostics \n")
    assert reply.data == data
    assert reply.exit_code == 3
    assert reply.stderr == "diagnostics"


def test_bundle_version_follows_the_content(tmp_path):
    copy = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, copy)
    first = remote.ScriptBundle.load(copy)
    assert first.version == remote.ScriptBundle.load(SCRIPTS).version
    assert set(first.files) == set(remote.SCRIPT_FILES)
    with open(copy / "stop.sh", "a") as f:
        f.write("# a sysadmin's edit\n")
    assert remote.ScriptBundle.load(copy).version != first.version


def test_missing_key_names_the_paths(tmp_path):
    with pytest.raises(remote.IdentityError, match="no private key found.*id_ed25519"):
        remote.load_private_key([str(tmp_path / "id_ed25519")])


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_key_with_passphrase_is_refused_with_advice(tmp_path, key_type):
    path = tmp_path / f"id_{key_type}"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "secret", "-f", str(path)], check=True)
    with pytest.raises(remote.IdentityError, match="protected by a passphrase"):
        remote.load_private_key([str(path)])


def test_pem_rsa_key_with_passphrase_is_refused(tmp_path):
    path = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(path), password="pw")
    with pytest.raises(remote.IdentityError, match="protected by a passphrase"):
        remote.load_private_key([str(path)])


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_first_existing_key_of_any_type_is_loaded(tmp_path, key_type):
    path = tmp_path / f"id_{key_type}"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True)
    key = remote.load_private_key([str(tmp_path / "missing"), str(path)])
    assert key.fingerprint.startswith("SHA256:")
