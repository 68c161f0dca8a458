"""invoke check / deploy without a cluster: settings, verdicts, the table, the spawner's choice."""

from __future__ import annotations

import hashlib
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


# --- deploy over an unsafe copy ---------------------------------------------------------


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
