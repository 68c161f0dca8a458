"""invoke check / deploy without a cluster: settings, verdicts, the table, the spawner's choice."""

from __future__ import annotations

import hashlib
import stat
from types import SimpleNamespace

import pytest

from remotesingularityspawner import deploy, remote
from remotesingularityspawner.nodes import Node

BUNDLE = remote.ScriptBundle(files={"common.sh": b"a", "stop.sh": b"b"}, version="v1")


def settings(**overrides):
    values = dict(hosts=":10.0.0.1", image="/images/j.sif")
    values.update(overrides)
    return deploy.make_settings(**values)[0]


def sums(files):
    return " ".join(f"{n}={hashlib.sha256(d).hexdigest()}" for n, d in files.items())


def probe(**overrides):
    reply = {
        "runtime": "/usr/bin/apptainer",
        "runtime_version": "apptainer version 1.3.4",
        "image": "ok",
        "image_for_all": True,
        "scripts": "ok",
        "scripts_problem": "",
        "scripts_sums": sums(BUNDLE.files),
    }
    reply.update(overrides)
    return reply


# --- settings ------------------------------------------------------------------


def test_hosts_take_names_addresses_and_pairs():
    nodes, warnings = deploy.parse_hosts(
        "n1:10.0.0.1, :10.0.0.2,bad_name",
    )
    assert nodes == [Node("n1", "10.0.0.1"), Node("10.0.0.2", "10.0.0.2")]
    assert len(warnings) == 1 and "bad_name" in warnings[0]


def test_the_hub_config_gives_nodes_runtime_image_and_known_hosts(tmp_path):
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(
        "c = get_config()\n"
        "c.RemoteSingularitySpawner.nodelist = 'a:10.0.0.1,b:10.0.0.2'\n"
        "c.RemoteSingularitySpawner.singularity_exe_path = 'apptainer'\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/shared/j.sif'\n"
        "c.RemoteSingularitySpawner.known_hosts_files = ['/site/known_hosts', '{home}/.ssh/known_hosts']\n"
        "c.RemoteSingularitySpawner.ssh_port = 2222\n"
    )
    s, warnings = deploy.make_settings(deploy.read_hub_config(cfg))
    assert warnings == []
    assert [n.label for n in s.nodes] == ["a", "b"]
    assert (s.exe, s.image, s.port) == ("apptainer", "/shared/j.sif", 2222)
    assert s.node_scripts_dir == "/opt/remote-singularity-spawner/scripts"
    assert "/site/known_hosts" in s.known_hosts
    assert not any("{" in p for p in s.known_hosts), "per-user templates are not the admin's"


def test_the_command_line_wins_over_the_config():
    config = {"nodelist": "a:10.0.0.1", "singularity_container_path": "/x.sif", "node_scripts_dir": "/c"}
    s, _ = deploy.make_settings(config, hosts=":10.0.0.9", image="/y.sif", node_scripts_dir="/d/")
    assert [n.address for n in s.nodes] == ["10.0.0.9"]
    assert (s.image, s.node_scripts_dir) == ("/y.sif", "/d")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hosts=""), "no node"),
        (dict(hosts="bad_name"), "no node"),
        (dict(image=""), "no image"),
        (dict(image="images/j.sif"), "'images/j.sif'"),
        (dict(image="/images/j.sif\nrm -rf /"), "'/images/j.sif\\\\nrm -rf /'"),
        (dict(node_scripts_dir="/opt/../tmp"), "'/opt/../tmp'"),
        (dict(node_scripts_dir="/opt/x;rm -rf /"), "'/opt/x;rm -rf /'"),
    ],
)
def test_bad_values_are_refused_naming_them(kwargs, message):
    with pytest.raises(deploy.DeployError, match=message.replace("(", r"\(")):
        settings(**kwargs)


def test_a_broken_config_file_is_reported(tmp_path):
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text("c = get_config()\nc.RemoteSingularitySpawner.nodelist = \n")
    with pytest.raises(deploy.DeployError, match="SyntaxError"):
        deploy.read_hub_config(cfg)
    with pytest.raises(deploy.DeployError, match="no such config file"):
        deploy.read_hub_config(tmp_path / "missing.py")


# --- verdicts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, line, shown, fit",
    [
        ("/usr/bin/apptainer", "apptainer version 1.0.0", "apptainer 1.0.0", True),
        ("/usr/bin/singularity", "singularity-ce version 3.11.5-jammy", "singularity-ce 3.11.5-jammy", True),
        ("/usr/bin/singularity", "singularity version 3.5.3", "singularity 3.5.3 (TOO OLD)", False),
        ("/usr/bin/apptainer", "apptainer version 0.9.1", "apptainer 0.9.1 (TOO OLD)", False),
        ("/usr/bin/singularity", "bash: line 1: oops", "UNKNOWN", False),
        ("", "", "MISSING", False),
    ],
)
def test_runtime_name_version_and_minimum(path, line, shown, fit):
    text, problem = deploy.runtime_verdict(path, line, "singularity")
    assert text == shown
    assert (problem == "") == fit


def test_a_fit_node():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    assert deploy.judge(report, probe(), settings(), BUNDLE) == "current"
    assert report.fit and report.problems == []
    assert (report.runtime, report.image, report.scripts) == ("apptainer 1.3.4", "ok", "current")


def test_a_missing_image_makes_the_node_unfit_and_says_which():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    deploy.judge(report, probe(image="missing", image_for_all=False), settings(), BUNDLE)
    assert not report.fit
    assert report.image == "MISSING"
    assert report.problems == ["image /images/j.sif: missing"]


def test_missing_scripts_leave_the_node_fit_the_spawner_uploads_per_user():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    assert deploy.judge(report, probe(scripts="missing", scripts_sums=""), settings(), BUNDLE) == "missing"
    assert report.fit and report.scripts == "missing"


def test_other_files_under_this_version_make_the_node_unfit():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    other = sums({"common.sh": b"a", "stop.sh": b"edited"})
    assert deploy.judge(report, probe(scripts_sums=other), settings(), BUNDLE) == "different"
    assert not report.fit and "run invoke deploy" in report.problems[0]


def test_an_unsafe_copy_is_a_note_not_a_failure():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    state = deploy.judge(
        report, probe(scripts="unsafe", scripts_problem="/opt is writable"), settings(), BUNDLE
    )
    assert state == "unsafe" and report.fit
    assert "/opt is writable" in report.notes[0]


@pytest.mark.parametrize(
    "error, shown",
    [
        (remote.ConnectError("cannot connect to root@10.0.0.1:22: timed out"), "DOWN"),
        (remote.HostKeyError("the host key of 10.0.0.1 ... is not in known_hosts"), "HOST KEY"),
        (remote.IdentityError("login as root@10.0.0.1:22 refused"), "LOGIN REFUSED"),
    ],
)
def test_a_node_that_cannot_be_logged_in_to_is_unfit_with_the_reason(error, shown):
    def connect(node):
        raise error

    report = deploy.inspect_node(Node("n1", "10.0.0.1"), settings(), BUNDLE, connect, "root")
    assert report.ssh == shown and not report.fit
    assert report.problems == [str(error)]
    table = deploy.format_table([report])
    assert table.splitlines()[0].split() == ["NODE", "SSH", "RUNTIME", "IMAGE", "SCRIPTS", "FIT"]
    assert f"n1: {error}" in table


def test_the_table_has_one_row_per_node_and_the_reasons_below():
    fit = deploy.NodeReport(Node("n1", "10.0.0.1"), "ok (root)", "apptainer 1.3.4", "ok", "current")
    unfit = deploy.NodeReport(
        Node("10.0.0.2", "10.0.0.2"), "ok (root)", "apptainer 1.3.4", "MISSING", "current"
    )
    unfit.problems.append("image /images/j.sif: missing")
    lines = deploy.format_table([fit, unfit]).splitlines()
    assert lines[1].split() == [
        "n1",
        "(10.0.0.1)",
        "ok",
        "(root)",
        "apptainer",
        "1.3.4",
        "ok",
        "current",
        "yes",
    ]
    assert lines[2].split()[-1] == "NO" and lines[2].split()[0] == "10.0.0.2"
    assert lines[3] == "10.0.0.2: image /images/j.sif: missing"


# --- the spawner's choice between the node-wide and the per-user copy ----------


class FakeSFTP:
    """Paths with (uid, mode); records what is written."""

    def __init__(self, entries):
        self.entries = dict(entries)
        self.written = []

    def stat(self, path):
        if path not in self.entries:
            raise FileNotFoundError(path)
        uid, mode = self.entries[path]
        return SimpleNamespace(st_uid=uid, st_mode=mode)

    def mkdir(self, path, mode=0o777):
        self.entries[path] = (1000, stat.S_IFDIR | mode)

    def chmod(self, path, mode):
        pass

    def open(self, path, flags):
        self.written.append(path)
        entries = self.entries

        class File:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                entries[path] = (1000, stat.S_IFREG | 0o600)

            def chmod(self, mode):
                pass

            def write(self, data):
                pass

        return File()

    def rename(self, old, new):
        for key in [k for k in self.entries if k == old or k.startswith(old + "/")]:
            self.entries[new + key[len(old) :]] = self.entries.pop(key)


NODE_DIR = "/opt/rss/scripts"


def node_wide(version, uid=0, file_mode=0o644, parent_mode=0o755):
    entries = {"/opt": (0, stat.S_IFDIR | parent_mode), "/opt/rss": (0, stat.S_IFDIR | 0o755)}
    entries[NODE_DIR] = (0, stat.S_IFDIR | 0o755)
    entries[f"{NODE_DIR}/{version}"] = (0, stat.S_IFDIR | 0o755)
    for name in remote.SCRIPT_FILES:
        entries[f"{NODE_DIR}/{version}/{name}"] = (uid, stat.S_IFREG | file_mode)
    return entries


@pytest.mark.parametrize(
    "entries, reason",
    [
        (node_wide("v"), ""),
        ({}, "does not exist"),
        (node_wide("v", uid=1000), "owned by uid 1000, not root"),
        (node_wide("v", file_mode=0o664), "writable by group or others (mode 664)"),
        (node_wide("v", parent_mode=0o777), "/opt is writable by group or others"),
    ],
)
def test_node_wide_scripts_are_trusted_only_when_root_owned_and_not_writable_by_others(entries, reason):
    why = remote.untrusted_because(FakeSFTP(entries), f"{NODE_DIR}/v")
    assert (why == "") == (reason == "")
    assert reason in why


class FakeConn:
    def __init__(self, sftp):
        self.host = "10.0.0.1"
        self.transport = SimpleNamespace(is_active=lambda: True, set_keepalive=lambda s: None)
        self._sftp = sftp
        self.commands = []

    def sftp(self):
        return self._sftp

    def run(self, command, in_stream=None):
        self.commands.append(command)
        return SimpleNamespace(exited=0, stdout='{"running": true}\n', stderr="")

    def close(self):
        pass


@pytest.mark.parametrize("installed, uses_node_dir", [(True, True), (False, False)])
def test_the_spawner_runs_the_node_wide_scripts_when_installed_else_uploads_per_user(
    installed, uses_node_dir, tmp_path
):
    for name in remote.SCRIPT_FILES:
        (tmp_path / name).write_text(f"# {name} {installed}\n")
    bundle = remote.ScriptBundle.load(tmp_path)
    sftp = FakeSFTP(node_wide(bundle.version) if installed else {})
    conn = FakeConn(sftp)
    pool = remote.ConnectionPool(opener=lambda target, log: conn)
    target = remote.Target(host="10.0.0.1", username="alice", key_files=(), known_hosts_files=())
    with remote.NodeSession(target, bundle, ".rss", pool=pool, node_dir=NODE_DIR) as s:
        s.run("check_pid.sh", ["--pid", "1"])
    if uses_node_dir:
        assert conn.commands == [f"bash {NODE_DIR}/{bundle.version}/check_pid.sh --pid 1"]
        assert sftp.written == [], "nothing uploaded to the user's home"
    else:
        assert conn.commands == [f"bash .rss/scripts/{bundle.version}/check_pid.sh --pid 1"]
        assert len(sftp.written) == len(remote.SCRIPT_FILES)


@pytest.mark.parametrize(
    "problem, reinstalled",
    [
        (
            f"/opt/remote-singularity-spawner/scripts/{BUNDLE.version}/stop.sh is owned by uid 7, not root",
            True,
        ),
        (f"/opt/remote-singularity-spawner/scripts/{BUNDLE.version} is writable by group or others", True),
        ("/opt is writable by group or others (mode 777)", False),
    ],
)
def test_deploy_replaces_an_unsafe_copy_but_not_for_an_unsafe_parent(monkeypatch, problem, reinstalled):
    probes = [probe(scripts="unsafe", scripts_problem=problem), probe()]
    installs = []
    monkeypatch.setattr(deploy, "probe_node", lambda conn, s, b: probes.pop(0))
    monkeypatch.setattr(deploy, "install", lambda conn, s, b, state: installs.append(state))
    conn = SimpleNamespace(close=lambda: None)
    report = deploy.inspect_node(
        Node("n1", "10.0.0.1"), settings(), BUNDLE, lambda n: conn, "root", change=True
    )
    assert installs == (["unsafe"] if reinstalled else [])
    assert report.fit
    if reinstalled:
        assert report.scripts == "INSTALLED" and report.notes == []
    else:
        assert report.scripts == "UNSAFE" and problem in report.notes[0]


def test_node_wide_scripts_removed_behind_the_spawners_back_fall_back_to_an_upload(tmp_path):
    for name in remote.SCRIPT_FILES:
        (tmp_path / name).write_text(f"# {name}\n")
    bundle = remote.ScriptBundle.load(tmp_path)
    sftp = FakeSFTP(node_wide(bundle.version))
    conn = FakeConn(sftp)
    pool = remote.ConnectionPool(opener=lambda target, log: conn)
    target = remote.Target(host="10.0.0.9", username="bob", key_files=(), known_hosts_files=())
    with remote.NodeSession(target, bundle, ".rss", pool=pool, node_dir=NODE_DIR) as s:
        s.run("check_pid.sh", [])
    # An admin removes the node-wide copy; bash then says the file is missing.
    sftp.entries = {k: v for k, v in sftp.entries.items() if not k.startswith(NODE_DIR)}
    missing = f"bash: {NODE_DIR}/{bundle.version}/stop.sh: No such file or directory\n"
    replies = [SimpleNamespace(exited=127, stdout="", stderr=missing)]
    run = conn.run
    conn.run = lambda command, in_stream=None: replies.pop(0) if replies else run(command, in_stream)
    with remote.NodeSession(target, bundle, ".rss", pool=pool, node_dir=NODE_DIR) as s:
        reply = s.run("stop.sh", [])
    assert reply.exit_code == 0
    assert conn.commands[-1] == f"bash .rss/scripts/{bundle.version}/stop.sh"
    assert len(sftp.written) == len(remote.SCRIPT_FILES)


def test_a_copy_deployed_while_the_hub_runs_is_used_from_the_next_start(tmp_path):
    for name in remote.SCRIPT_FILES:
        (tmp_path / name).write_text(f"# {name} later\n")
    bundle = remote.ScriptBundle.load(tmp_path)
    sftp = FakeSFTP({})
    conn = FakeConn(sftp)
    pool = remote.ConnectionPool(opener=lambda target, log: conn)
    target = remote.Target(host="10.0.0.8", username="carol", key_files=(), known_hosts_files=())

    def run(script):
        with remote.NodeSession(target, bundle, ".rss", pool=pool, node_dir=NODE_DIR) as s:
            s.run(script, [])
        return conn.commands[-1].split()[1].rsplit("/", 2)[0]

    assert run("start_singleuser.sh") == ".rss/scripts"
    sftp.entries.update(node_wide(bundle.version))  # invoke deploy
    assert run("check_pid.sh") == ".rss/scripts", "polls keep what they found"
    assert run("start_singleuser.sh") == NODE_DIR
    assert run("stop.sh") == NODE_DIR
