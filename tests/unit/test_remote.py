"""The SSH layer: the script protocol, keys, the connection pool, where the scripts run from.

Connections are the one fake family of tests/unit/fakes.py.
"""

import re
import shlex
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
from fakes import FakeSSH, reply

from remotesingularityspawner import calls, remote
from remotesingularityspawner.remote import protocol

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_exit_code_table_matches_the_scripts_library():
    text = (SCRIPTS / "common.sh").read_text()
    in_bash = {name: int(code) for name, code in re.findall(r"readonly RSS_EXIT_(\w+)=(\d+)", text)}
    in_python = {code.name: int(code) for code in remote.ExitCode}
    assert in_bash == in_python
    assert not set(in_python.values()) & {1, 2, 126, 127, 255}
    assert all(v < 128 for v in in_python.values())


def test_the_port_bounds_match_the_scripts_library():
    text = (SCRIPTS / "common.sh").read_text()
    in_bash = tuple(int(re.search(rf"readonly RSS_PORT_{end}=(\d+)", text)[1]) for end in ("LOW", "HIGH"))
    assert in_bash == calls.PORT_BOUNDS


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
    parsed = remote.parse_reply(3, stdout, "  diagnostics \n")
    assert parsed.data == data
    assert parsed.exit_code == 3
    assert parsed.stderr == "diagnostics"


def test_a_login_banner_on_stdout_and_stderr_is_not_part_of_the_reply():
    stdout = "Welcome to the cluster\n{not json either\n{\"running\": true}\n"
    stderr = "module: loaded defaults\nno newline at the end\n@rss\n@progress 40 starting\nFATAL: oops\n"
    parsed = remote.parse_reply(4, stdout, stderr)
    assert parsed.data == {"running": True}
    assert parsed.stderr == "FATAL: oops"


def test_every_command_goes_through_the_launcher_with_its_values_as_separate_words():
    command = remote.command_line(".rss/scripts/v1/stop.sh", ["--pid", "7", "--server-dir", "a b;$(id)"])
    argv = shlex.split(command)
    assert argv[:5] == ["bash", "-c", protocol.LAUNCHER, "rss", ".rss/scripts/v1/stop.sh"]
    assert argv[5:] == ["--pid", "7", "--server-dir", "a b;$(id)"]
    fed = shlex.split(remote.command_line(None, ["put", "--dir", "x"]))
    assert fed[4:] == ["-s", "--", "put", "--dir", "x"]
    assert f"exit {remote.ExitCode.NO_SCRIPTS:d}" in protocol.LAUNCHER


def test_files_travel_as_name_and_content_records():
    payload = remote.files_payload({"a.sh": b"echo a\n", "b.crt": b"-----BEGIN"})
    assert payload == "a.sh\0echo a\n\0b.crt\0-----BEGIN\0"
    for bad in ({"x/y": b""}, {"..": b""}, {"a": b"nul\0inside"}):
        with pytest.raises(ValueError):
            remote.files_payload(bad)


def test_bundle_version_follows_the_content(tmp_path):
    copy = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, copy)
    first = remote.ScriptBundle.load(copy)
    assert first.version == remote.ScriptBundle.load(SCRIPTS).version
    assert set(first.files) == set(remote.SCRIPT_FILES)
    assert first.version == _bash_version(copy), "the scripts compute the same version"
    with open(copy / "stop.sh", "a") as f:
        f.write("# a sysadmin's edit\n")
    assert remote.ScriptBundle.load(copy).version != first.version


def _bash_version(directory: Path) -> str:
    """bundle_version of scripts/common.sh, as put_files.sh computes it on a node."""
    command = f'source {shlex.quote(str(SCRIPTS / "common.sh"))}; bundle_version "$1"'
    out = subprocess.run(["bash", "-c", command, "x", str(directory)], capture_output=True, text=True)
    return out.stdout


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


def make_target(host="10.0.0.1", user="alice"):
    return remote.Target(host=host, username=user, key_files=("k",), known_hosts_files=())


BUNDLE = remote.ScriptBundle(
    files={
        "common.sh": b"# common.sh\n",
        "put_files.sh": b'# put_files.sh\nmain "$@"; exit\n',
        "check_pid.sh": b"# check_pid.sh\n",
        "stop.sh": b"# stop.sh\n",
    },
    version="v1",
)


@pytest.fixture
def ssh():
    """Fake nodes whose scripts answer "ok"; logins take a moment, so threads can race."""
    fake = FakeSSH(delay=0.01)
    for host in ("10.0.0.1", "10.0.0.8", "10.0.0.9"):
        for script in ("check_pid.sh", "stop.sh", "start_singleuser.sh"):
            fake.node(host).on(script, reply(ok=True))
    return fake


def session(pool, target=None, bundle=BUNDLE, node_dir=""):
    return remote.NodeSession(target or make_target(), bundle, ".rss", pool=pool, node_dir=node_dir)


def commands(ssh, host="10.0.0.1"):
    return [r.script for r in ssh.node(host).runs]


def test_operations_of_one_user_on_one_node_share_one_connection(ssh):
    pool = remote.ConnectionPool(opener=ssh)
    for _ in range(5):
        with session(pool) as s:
            assert s.run("check_pid.sh", ["--pid", "1"]).data == {"ok": True}
    with session(pool, make_target(user="bob")) as s:
        s.run("check_pid.sh", [])
    assert [c.target.username for c in ssh.connections] == ["alice", "bob"]
    assert commands(ssh).count("check_pid.sh") == 6
    assert pool.opened == 2
    assert ssh.connections[0].keepalive == 30


def test_the_scripts_are_looked_for_once_and_sent_only_when_missing(ssh):
    pool = remote.ConnectionPool(opener=ssh)
    for _ in range(3):
        with session(pool) as s:
            s.run("check_pid.sh", [])
    put = [r for r in ssh.node("10.0.0.1").runs if r.script == "put_files.sh"]
    assert [r.args[0] for r in put] == ["scripts", "scripts"], "one look, then one upload"
    assert "--payload" not in put[0].args and put[0].stdin == ""
    assert "--payload" in put[1].args and put[1].stdin == remote.files_payload(BUNDLE.files)
    assert ssh.node("10.0.0.1").dirs[".rss/scripts/v1"] == {k: v.decode() for k, v in BUNDLE.files.items()}


def test_concurrent_first_operations_open_a_single_connection(ssh):
    pool = remote.ConnectionPool(opener=ssh)

    def poll():
        with session(pool) as s:
            return s.run("check_pid.sh", []).exit_code

    with ThreadPoolExecutor(16) as ex:
        assert list(ex.map(lambda _: poll(), range(32))) == [0] * 32
    assert len(ssh.connections) == 1
    assert commands(ssh).count("check_pid.sh") == 32


def test_no_more_logins_at_once_to_one_node_than_sshd_accepts(ssh):
    """A restarted Hub polls every server at once: 24 users log in to one node, and sshd
    (MaxStartups 10) would drop connections beyond 10 not yet logged in."""
    in_login, peak, lock = [0], [0], threading.Lock()

    def opener(target, log, caches):
        with lock:
            in_login[0] += 1
            peak[0] = max(peak[0], in_login[0])
        try:
            return FakeSSH.__call__(ssh, target, log)  # takes its delay
        finally:
            with lock:
                in_login[0] -= 1

    ssh.delay = 0.05
    pool = remote.ConnectionPool(opener=opener)

    def poll(user):
        with session(pool, make_target(user=user)) as s:
            return s.run("check_pid.sh", []).exit_code

    users = [f"user{i}" for i in range(24)]
    with ThreadPoolExecutor(24) as ex:
        assert list(ex.map(poll, users)) == [0] * 24
    assert len(ssh.connections) == 24
    assert peak[0] == remote.pool.LOGINS_PER_NODE


def test_no_more_commands_at_once_on_a_connection_than_sshd_allows(ssh):
    running, peak, lock = [0], [0], threading.Lock()

    def slow(args, stdin):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threading.Event().wait(0.02)
        with lock:
            running[0] -= 1
        return reply(ok=True)

    ssh.node("10.0.0.1").on("check_pid.sh", slow)
    pool = remote.ConnectionPool(opener=ssh, max_sessions=4)

    def poll(_):
        with session(pool) as s:
            s.run("check_pid.sh", [])

    with ThreadPoolExecutor(12) as ex:
        list(ex.map(poll, range(24)))
    assert peak[0] == 4


def test_a_dead_connection_is_replaced(ssh):
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool) as s:
        s.run("check_pid.sh", [])
    ssh.connections[0].alive = False  # e.g. keepalive noticed the node is gone
    with session(pool) as s:
        s.run("check_pid.sh", [])
    assert len(ssh.connections) == 2
    assert ssh.connections[0].closed


def test_idle_connections_are_closed(ssh):
    pool = remote.ConnectionPool(opener=ssh, idle_timeout=0.05)
    with session(pool) as s:
        s.run("check_pid.sh", [])
    threading.Event().wait(0.1)
    with session(pool, make_target(user="bob")) as s:  # any use of the pool sweeps
        s.run("check_pid.sh", [])
    assert ssh.connections[0].closed
    assert not ssh.connections[1].closed
    assert len(pool) == 1


def test_a_connection_in_use_is_not_closed_by_the_sweep(ssh):
    pool = remote.ConnectionPool(opener=ssh, idle_timeout=0)
    with session(pool) as s:
        pool.close_idle()
        s.run("check_pid.sh", [])
    assert not ssh.connections[0].closed


@pytest.mark.parametrize(
    "script, retried", [("check_pid.sh", True), ("stop.sh", True), ("start_singleuser.sh", False)]
)
def test_a_kept_connection_that_broke_is_retried_only_for_idempotent_scripts(ssh, script, retried):
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool) as s:
        s.run("check_pid.sh", [])
    # sshd restarted: the kept connection is dead, but nobody has noticed yet.
    ssh.connections[0].fail_with = EOFError("reset")
    with session(pool) as s:
        if retried:
            assert s.run(script, []).exit_code == 0
        else:
            with pytest.raises(remote.ConnectError, match="lost the connection to 10.0.0.1"):
                s.run(script, [])
    assert len(ssh.connections) == (2 if retried else 1)
    assert ssh.connections[0].closed
    # Either way the next operation gets a working connection.
    with session(pool) as s:
        assert s.run("check_pid.sh", []).exit_code == 0


def test_a_fresh_connection_that_fails_is_not_retried(ssh):
    pool = remote.ConnectionPool(opener=ssh)
    original = ssh.__call__

    def broken(target, log, caches):
        conn = original(target, log)
        conn.fail_with = OSError("broken pipe")
        return conn

    pool._open = broken
    with session(pool) as s:
        with pytest.raises(remote.ConnectError):
            s.run("check_pid.sh", [])
    assert len(ssh.connections) == 1
    assert len(pool) == 0


def test_a_command_without_input_gets_no_stdin_to_close(ssh):
    # An EOF sent after a quick command's channel closed makes sshd drop the
    # shared connection: only a command that reads input gets a stdin (and EOF).
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool) as s:
        s.run("check_pid.sh", ["--pid", "1"])
        s.run("start_singleuser.sh", [], stdin="A=1\0")
    stdins = ssh.connections[0].stdins
    assert stdins[-2:] == [False, "A=1\0"]
    # put_files.sh reads its script and its files from stdin, to the end.
    assert all(isinstance(s, str) and s for s in stdins[:-2])


def test_refused_login_names_the_key_used_and_what_to_fix(tmp_path, monkeypatch):
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)

    def refuse(self):
        raise paramiko.AuthenticationException("Authentication failed.")

    monkeypatch.setattr(remote.ssh.fabric.Connection, "open", refuse)
    target = remote.Target(
        host="10.0.0.9", username="alice", key_files=(str(tmp_path / "none"), str(path)), known_hosts_files=()
    )
    with pytest.raises(remote.IdentityError) as e:
        remote.connect(target)
    assert f"login as alice@10.0.0.9:22 with the key {path} refused" in str(e.value)
    assert f"add {path}.pub to ~alice/.ssh/authorized_keys" in str(e.value)


def test_a_node_that_goes_silent_mid_command_counts_as_a_broken_connection(ssh):
    """No answer within the timeout: the kept connection is dropped and a poll tried once more."""
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool) as s:
        s.run("check_pid.sh", [], timeout=7)
    assert ssh.node("10.0.0.1").runs[-1].timeout == 7

    def silent(args, stdin):
        raise remote.CommandTimeout("no end within 7s")

    ssh.node("10.0.0.1").on("check_pid.sh", silent)
    with session(pool) as s:
        with pytest.raises(remote.ConnectError, match="10.0.0.1 did not answer within 7s"):
            s.run("check_pid.sh", [], timeout=7)
    assert len(ssh.connections) == 2, "retried once on a new connection"
    assert ssh.connections[0].closed and ssh.connections[1].closed


# --- where the scripts run from: the node-wide copy or the user's -------------------------

NODE_DIR = "/opt/rss/scripts"


def scripts_dir_of(ssh, host, script):
    return next(r.directory for r in reversed(ssh.node(host).runs) if r.script == script)


@pytest.mark.parametrize("installed, uses_node_dir", [(True, True), (False, False)])
def test_the_spawner_runs_the_node_wide_scripts_when_installed_else_uploads_per_user(
    ssh, installed, uses_node_dir
):
    if installed:
        ssh.node("10.0.0.1").node_wide.add(f"{NODE_DIR}/v1")
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool, node_dir=NODE_DIR) as s:
        s.run("check_pid.sh", ["--pid", "1"])
    node = ssh.node("10.0.0.1")
    if uses_node_dir:
        assert scripts_dir_of(ssh, "10.0.0.1", "check_pid.sh") == f"{NODE_DIR}/v1"
        assert node.dirs == {}, "nothing uploaded to the user's home"
    else:
        assert scripts_dir_of(ssh, "10.0.0.1", "check_pid.sh") == ".rss/scripts/v1"
        assert set(node.dirs[".rss/scripts/v1"]) == set(BUNDLE.files)
    look = next(r for r in node.runs if r.script == "put_files.sh")
    assert look.args[look.args.index("--node-dir") + 1] == f"{NODE_DIR}/v1"


def test_node_wide_scripts_removed_behind_the_spawners_back_fall_back_to_an_upload(ssh):
    node = ssh.node("10.0.0.9")
    node.node_wide.add(f"{NODE_DIR}/v1")
    pool = remote.ConnectionPool(opener=ssh)
    target = make_target(host="10.0.0.9", user="bob")
    with session(pool, target, node_dir=NODE_DIR) as s:
        s.run("check_pid.sh", [])
    # An admin removes the node-wide copy; the launcher then says the scripts are missing.
    node.node_wide.clear()
    with session(pool, target, node_dir=NODE_DIR) as s:
        answer = s.run("stop.sh", [])
    assert answer.exit_code == 0
    assert scripts_dir_of(ssh, "10.0.0.9", "stop.sh") == ".rss/scripts/v1"
    assert set(node.dirs[".rss/scripts/v1"]) == set(BUNDLE.files)


def test_a_copy_deployed_while_the_hub_runs_is_used_from_the_next_start(ssh):
    pool = remote.ConnectionPool(opener=ssh)
    target = make_target(host="10.0.0.8", user="carol")

    def run(script):
        with session(pool, target, node_dir=NODE_DIR) as s:
            s.run(script, [])
        return scripts_dir_of(ssh, "10.0.0.8", script).rsplit("/", 1)[0]

    assert run("start_singleuser.sh") == ".rss/scripts"
    ssh.node("10.0.0.8").node_wide.add(f"{NODE_DIR}/v1")  # invoke deploy
    assert run("check_pid.sh") == ".rss/scripts", "polls keep what they found"
    assert run("start_singleuser.sh") == NODE_DIR
    assert run("stop.sh") == NODE_DIR


def test_a_home_that_cannot_be_written_fails_naming_the_place_and_the_reason(ssh):
    node = ssh.node("10.0.0.1")
    original = node._put_files

    def full_home(run):
        if "--payload" in run.args:
            return reply(
                remote.ExitCode.CANNOT_WRITE,
                stderr="put_files.sh: cannot create the directory .rss/scripts: Disk quota exceeded "
                "(is the home directory full (disk quota) or read-only?)",
            )
        return original(run)

    node._put_files = full_home
    pool = remote.ConnectionPool(opener=ssh)
    with session(pool) as s:
        with pytest.raises(remote.RemoteError) as e:
            s.run("start_singleuser.sh", [], stdin="A=1\0")
    assert "cannot put the scripts into 10.0.0.1:.rss/scripts/v1" in str(e.value)
    assert "Disk quota exceeded" in str(e.value) and "read-only" in str(e.value)
    assert "start_singleuser.sh" not in commands(ssh)


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_the_launcher_means_the_same_to_each_login_shell(tmp_path, shell):
    """sshd hands the command to the user's login shell (`$SHELL -c COMMAND`)."""
    path = shutil.which(shell)
    assert path, f"{shell} is not installed (.ci/setup installs it): users have it as login shell"
    script = tmp_path / "dir with 'quote'" / "echo.sh"
    script.parent.mkdir()
    script.write_text('printf "%s|" "$@"; printf "\\n"; printf "{\\"ok\\": true}\\n"\n')
    args = ["a b", "$HOME", "`id`", "it's", "--", "100%", "a;b", "*", "{x,y}", "~", "x=$(id)"]
    out = subprocess.run([path, "-c", remote.command_line(str(script), args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "|".join(args) + "|"
    assert remote.parse_reply(out.returncode, out.stdout, out.stderr).data == {"ok": True}
    # Without arguments, the script gets none (a sourced file would otherwise see the launcher's).
    none = subprocess.run([path, "-c", remote.command_line(str(script), [])], capture_output=True, text=True)
    assert none.stdout.splitlines()[0] == "|", none.stdout
    missing = subprocess.run(
        [path, "-c", remote.command_line(str(tmp_path / "gone.sh"), [])], capture_output=True, text=True
    )
    assert missing.returncode == remote.ExitCode.NO_SCRIPTS


@pytest.mark.parametrize("word", ["/images/x!.sif", "two\nlines"])
def test_a_word_a_tcsh_login_shell_would_change_is_refused_naming_it(word):
    with pytest.raises(ValueError, match=re.escape(repr(word))):
        remote.command_line("/s/start.sh", ["--image", word])
