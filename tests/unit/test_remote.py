"""The Python side of the script protocol: exit codes, stdin payload, replies."""

import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


# --- the connection pool ------------------------------------------------------------------


class FakeTransport:
    def __init__(self):
        self.alive = True
        self.keepalive = None

    def is_active(self):
        return self.alive

    def set_keepalive(self, seconds):
        self.keepalive = seconds


class FakeResult:
    def __init__(self, stdout='{"ok": true}\n'):
        self.exited, self.stdout, self.stderr = 0, stdout, ""


class FakeConnection:
    """Stands in for fabric.Connection: records commands, can break."""

    def __init__(self, target, run=None):
        self.host = target.host
        self.transport = FakeTransport()
        self.closed = False
        self.commands = []
        self.timeouts = []
        self.stdins = []
        self._run = run

    def run(self, command, in_stream=None, timeout=None):
        if not self.transport.alive:
            raise EOFError("connection closed by peer")
        self.commands.append(command)
        self.timeouts.append(timeout)
        self.stdins.append(in_stream.read() if in_stream else in_stream)
        return self._run(self) if self._run else FakeResult()

    def close(self):
        self.closed = True
        self.transport.alive = False


def make_target(host="10.0.0.1", user="alice"):
    return remote.Target(host=host, username=user, key_files=("k",), known_hosts_files=())


class Opener:
    def __init__(self, run=None):
        self.connections = []
        self.run = run
        self.lock = threading.Lock()

    def __call__(self, target, log):
        time.sleep(0.01)  # give other threads the chance to race
        conn = FakeConnection(target, self.run)
        with self.lock:
            self.connections.append(conn)
        return conn


def session(pool, target, bundle=None):
    bundle = bundle or remote.ScriptBundle(files={}, version="v1")
    s = remote.NodeSession(target, bundle, ".rss", pool=pool)
    remote.NodeSession._found[(target.host, target.username, s.user_dir, "")] = s.user_dir
    return s


def test_operations_of_one_user_on_one_node_share_one_connection():
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)
    for _ in range(5):
        with session(pool, make_target()) as s:
            assert s.run("check_pid.sh", ["--pid", "1"]).data == {"ok": True}
    with session(pool, make_target(user="bob")) as s:
        s.run("check_pid.sh", [])
    assert [len(c.commands) for c in opener.connections] == [5, 1]
    assert pool.opened == 2
    assert opener.connections[0].transport.keepalive == 30


def test_concurrent_first_operations_open_a_single_connection():
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)

    def poll():
        with session(pool, make_target()) as s:
            return s.run("check_pid.sh", []).exit_code

    with ThreadPoolExecutor(16) as ex:
        assert list(ex.map(lambda _: poll(), range(32))) == [0] * 32
    assert len(opener.connections) == 1
    assert len(opener.connections[0].commands) == 32


def test_no_more_commands_at_once_on_a_connection_than_sshd_allows():
    running, peak, lock = [0], [0], threading.Lock()

    def slow(conn):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return FakeResult()

    pool = remote.ConnectionPool(opener=Opener(slow), max_sessions=4)

    def poll(_):
        with session(pool, make_target()) as s:
            s.run("check_pid.sh", [])

    with ThreadPoolExecutor(12) as ex:
        list(ex.map(poll, range(24)))
    assert peak[0] == 4


def test_a_dead_connection_is_replaced():
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)
    with session(pool, make_target()) as s:
        s.run("check_pid.sh", [])
    opener.connections[0].transport.alive = False  # e.g. keepalive noticed the node is gone
    with session(pool, make_target()) as s:
        s.run("check_pid.sh", [])
    assert len(opener.connections) == 2
    assert opener.connections[0].closed


def test_idle_connections_are_closed():
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener, idle_timeout=0.05)
    with session(pool, make_target()) as s:
        s.run("check_pid.sh", [])
    time.sleep(0.1)
    with session(pool, make_target(user="bob")) as s:  # any use of the pool sweeps
        s.run("check_pid.sh", [])
    assert opener.connections[0].closed
    assert not opener.connections[1].closed
    assert len(pool) == 1


def test_a_connection_in_use_is_not_closed_by_the_sweep():
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener, idle_timeout=0)
    with session(pool, make_target()) as s:
        pool.close_idle()
        s.run("check_pid.sh", [])
    assert not opener.connections[0].closed


@pytest.mark.parametrize(
    "script, retried", [("check_pid.sh", True), ("stop.sh", True), ("start_singleuser.sh", False)]
)
def test_a_kept_connection_that_broke_is_retried_only_for_idempotent_scripts(script, retried):
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)
    with session(pool, make_target()) as s:
        s.run("check_pid.sh", [])
    # sshd restarted: the kept connection is dead, but nobody has noticed yet.
    opener.connections[0].run = lambda command, in_stream=None, timeout=None: (_ for _ in ()).throw(
        EOFError("reset")
    )
    with session(pool, make_target()) as s:
        if retried:
            assert s.run(script, []).exit_code == 0
        else:
            with pytest.raises(remote.ConnectError, match="lost the connection to 10.0.0.1"):
                s.run(script, [])
    assert len(opener.connections) == (2 if retried else 1)
    assert opener.connections[0].closed
    # Either way the next operation gets a working connection.
    with session(pool, make_target()) as s:
        assert s.run("check_pid.sh", []).exit_code == 0


def test_a_fresh_connection_that_fails_is_not_retried():
    opener = Opener(run=lambda conn: (_ for _ in ()).throw(OSError("broken pipe")))
    pool = remote.ConnectionPool(opener=opener)
    with session(pool, make_target()) as s:
        with pytest.raises(remote.ConnectError):
            s.run("check_pid.sh", [])
    assert len(opener.connections) == 1
    assert len(pool) == 0


def test_a_command_without_input_gets_no_stdin_to_close():
    # An EOF sent after a quick command's channel closed makes sshd drop the
    # shared connection: only a command that reads input gets a stdin (and EOF).
    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)
    target = make_target()
    with session(pool, target) as s:
        s.run("check_pid.sh", ["--pid", "1"])
        s.run("start_singleuser.sh", [], stdin="A=1\0")
    assert opener.connections[0].stdins == [False, "A=1\0"]


def test_refused_login_names_the_key_used_and_what_to_fix(tmp_path, monkeypatch):
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)

    def refuse(self):
        raise paramiko.AuthenticationException("Authentication failed.")

    monkeypatch.setattr(remote.fabric.Connection, "open", refuse)
    target = remote.Target(
        host="10.0.0.9", username="alice", key_files=(str(tmp_path / "none"), str(path)), known_hosts_files=()
    )
    with pytest.raises(remote.IdentityError) as e:
        remote.connect(target)
    assert f"login as alice@10.0.0.9:22 with the key {path} refused" in str(e.value)
    assert f"add {path}.pub to ~alice/.ssh/authorized_keys" in str(e.value)


def test_a_node_that_goes_silent_mid_command_counts_as_a_broken_connection():
    """No answer within the timeout: the kept connection is dropped and a poll tried once more."""
    import invoke

    opener = Opener()
    pool = remote.ConnectionPool(opener=opener)
    with session(pool, make_target()) as s:
        s.run("check_pid.sh", [], timeout=7)
    assert opener.connections[0].timeouts == [7]

    def silent(command, in_stream=None, timeout=None):
        raise invoke.CommandTimedOut(FakeResult(), timeout=timeout)

    opener.connections[0].run = silent
    opener.run = lambda conn: silent("", timeout=7)
    with session(pool, make_target()) as s:
        with pytest.raises(remote.ConnectError, match="10.0.0.1 did not answer within 7s"):
            s.run("check_pid.sh", [], timeout=7)
    assert len(opener.connections) == 2, "retried once on a new connection"
    assert opener.connections[0].closed and opener.connections[1].closed
