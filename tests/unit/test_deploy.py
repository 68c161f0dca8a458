"""invoke check / deploy without a cluster: settings, verdicts, the table, the spawner's choice, the CA."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import jupyterhub
import pytest

from remotesingularityspawner import remote
from remotesingularityspawner.admin import command as admin
from remotesingularityspawner.admin import deploy, slurm_hosts
from remotesingularityspawner.admin.report import report_data
from remotesingularityspawner.placement.nodes import Node

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
        "srun": "/usr/bin/srun",
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


def test_without_srun_a_node_is_unfit_for_placement_slurm_only():
    no_srun = probe(srun="")
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    deploy.judge(report, no_srun, settings(), BUNDLE)
    assert report.fit, "placement ssh does not use srun"
    slurm = dataclasses.replace(settings(), submit_host=Node("n1", "10.0.0.1"))
    report = deploy.NodeReport(Node("n2", "10.0.0.2"))
    deploy.judge(report, no_srun, slurm, BUNDLE)
    assert not report.fit and report.problems == [
        "srun not on the login PATH: with placement slurm a server starts as a step of its job "
        "with it (install the Slurm client here)"
    ]
    report = deploy.NodeReport(Node("n2", "10.0.0.2"))
    deploy.judge(report, probe(srun="/usr/bin/srun"), slurm, BUNDLE)
    assert report.fit


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
    assert not report.fit and report.problems[0].endswith(": run remote-singularity-spawner deploy")


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
    assert table.splitlines()[0].split() == ["NODE", "SSH", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"]
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
        "-",
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
    monkeypatch.setattr(deploy, "probe_node", lambda conn, s, b, role: probes.pop(0))
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


# --- the CA: where its public key comes from -------------------------------------------


def keygen(path, key_type="ed25519", passphrase="", comment="hub-ca 2025"):
    args = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa"], "rsa": ["-t", "rsa", "-b", "2048"]}
    subprocess.run(["ssh-keygen", "-q", *args[key_type], "-N", passphrase, "-C", comment, "-f", str(path)],
                   check=True)  # fmt: skip
    return path


def public_part(path):
    """`TYPE BASE64` of a key pair's .pub file, as ssh-keygen wrote it."""
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def test_the_ca_from_a_public_key_file_keeps_a_plain_comment(tmp_path):
    key = keygen(tmp_path / "ca")
    line, source = admin.ca_public_key(trust_ca=f"{key}.pub")
    assert line == f"{public_part(key)} hub-ca 2025" and source == f"{key}.pub"
    (tmp_path / "odd.pub").write_text(f"# the Hub's CA\n{public_part(key)} it's!\n")
    assert admin.ca_public_key(trust_ca=str(tmp_path / "odd.pub"))[0] == public_part(key)


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_the_ca_from_the_hub_config_is_the_public_half_of_its_private_key(tmp_path, key_type):
    key = keygen(tmp_path / "ssh_ca", key_type)
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(f"c.RemoteSingularitySpawner.ssh_ca_key_file = {str(key)!r}\n")
    line, source = admin.ca_public_key(ca_key_file=deploy.read_hub_config(cfg)["ssh_ca_key_file"])
    assert line.split()[:2] == public_part(key).split() and source == str(key)
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=True)
    assert admin.ca_fingerprint(line) in listed.stdout


def test_the_command_line_ca_wins_and_no_ca_means_none(tmp_path):
    key, other = keygen(tmp_path / "ca"), keygen(tmp_path / "other")
    assert admin.ca_public_key(f"{key}.pub", str(other))[0].startswith(public_part(key))
    assert admin.ca_public_key("", "") == ("", "")


def test_an_unusable_ca_is_refused_naming_the_option_or_setting_never_showing_the_key(tmp_path):
    locked = keygen(tmp_path / "locked", passphrase="secret")
    with pytest.raises(deploy.DeployError, match=r"^ssh_ca_key_file: .*locked is protected by a passphrase"):
        admin.ca_public_key(ca_key_file=str(locked))
    with pytest.raises(deploy.DeployError, match=r"^ssh_ca_key_file: .*missing does not exist"):
        admin.ca_public_key(ca_key_file=str(tmp_path / "missing"))
    key = keygen(tmp_path / "ca")
    with pytest.raises(
        deploy.DeployError, match=r"^--trust-ca .*/ca is a private key: give its public key"
    ) as e:
        admin.ca_public_key(trust_ca=str(key))
    secret = "".join(key.read_text().splitlines()[1:-1])
    assert secret[:40] not in str(e.value) and secret[-40:] not in str(e.value)
    (tmp_path / "two.pub").write_text(f"{public_part(key)}\n{public_part(key)}\n")
    (tmp_path / "junk.pub").write_text("ssh-ed25519 AAAAnot-base64 x\n")
    for bad in ("two.pub", "junk.pub"):
        with pytest.raises(deploy.DeployError, match=f"--trust-ca .*{bad} must hold one public key line"):
            admin.ca_public_key(trust_ca=str(tmp_path / bad))
    with pytest.raises(deploy.DeployError, match="--trust-ca .*none.pub: cannot read it: No such file"):
        admin.ca_public_key(trust_ca=str(tmp_path / "none.pub"))


def test_the_admin_command_refuses_an_unusable_ca_before_any_connection(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "from remotesingularityspawner.admin.command import main; main()", "deploy",
         "--hosts", "n1:10.0.0.1", "--image", "/x.sif", "--trust-ca", str(tmp_path / "none.pub")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == admin.ExitStatus.CANNOT_RUN == 2, "could not run, not an unfit node (1)"
    assert f"error: --trust-ca {tmp_path}/none.pub: cannot read it" in out.stderr


def test_the_ca_and_sshd_config_reach_the_settings_and_a_bad_sshd_config_is_refused():
    s = settings(ca=("ssh-ed25519 AAAA hub", "ca.pub"), sshd_config="/etc/ssh/sshd_config.site")
    assert (s.ca_key, s.ca_source, s.sshd_config) == (
        "ssh-ed25519 AAAA hub",
        "ca.pub",
        "/etc/ssh/sshd_config.site",
    )
    assert settings().sshd_config == "/etc/ssh/sshd_config" and settings().ca_key == ""
    for bad in ("sshd_config", "/etc/ssh/../x", "/etc/ssh/sshd config"):
        with pytest.raises(deploy.DeployError, match=f"--sshd-config {bad!r}"):
            settings(sshd_config=bad)


# --- the CA on the node: the script's call, its answer, the column ----------------------

CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsl0cvZoHzWJyQ3y8vNL2iuFrmHTUWlHqpoCj5xnYpk hub"
BUNDLE_CA = remote.ScriptBundle(
    files={"common.sh": b"# common\n", "trust_ca.sh": b'main "$@"; exit\n'}, version="v1"
)


OLD_CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOUI+CxwT0BNP/pQyRX3J/R4pY7zJij9EpftSCl7J1aa old"


@pytest.mark.parametrize(
    "action, argv, key",
    [
        ("check", ["check"], CA),
        ("install", ["install"], CA),
        ("dry-run", ["install", "--dry-run"], CA),
        ("untrust", ["untrust"], OLD_CA),
        ("untrust-dry-run", ["untrust", "--dry-run"], OLD_CA),
    ],
)
def test_trust_ca_sh_is_fed_on_stdin_with_the_key_and_config_as_argv(monkeypatch, action, argv, key):
    sent = []

    def run_command(conn, command, stdin="", **kwargs):
        sent.append((shlex.split(command), stdin))
        state = "not trusted" if action.startswith("untrust") else "yes"
        return remote.Reply(0, {"ca": state, "ca_file": "/etc/ssh/x.pub", "why": ""})

    monkeypatch.setattr(remote, "run_command", run_command)
    s = settings(ca=(CA, "ca.pub"), untrust=(OLD_CA, "old.pub"))
    if action.startswith("untrust"):
        assert deploy.untrust_ca(None, s, BUNDLE_CA, action.endswith("dry-run"))["ca"] == "not trusted"
    else:
        assert deploy.trust_ca(None, s, BUNDLE_CA, action)["ca"] == "yes"
    words, stdin = sent[0]
    assert words[4:6] == ["-s", "--"]
    assert words[6:] == [*argv, "--key", key, "--sshd-config", "/etc/ssh/sshd_config"]
    assert stdin == '# common\n\nmain "$@"; exit\n'


@pytest.mark.parametrize(
    "reply",
    [
        remote.Reply(64, {}, "trust_ca.sh: unknown option"),
        remote.Reply(0, {"pid": 1}, ""),
        remote.Reply(7, {"ca": "no"}, "trust_ca.sh: --key needs one OpenSSH public key line"),
    ],
)
def test_a_reply_that_is_not_an_answer_is_an_error_with_its_stderr(monkeypatch, reply):
    monkeypatch.setattr(remote, "run_command", lambda *a, **k: reply)
    with pytest.raises(remote.RemoteError, match=r"trust_ca.sh failed \(exit code"):
        deploy.trust_ca(None, settings(ca=(CA, "ca.pub")), BUNDLE_CA, "check")


@pytest.mark.parametrize(
    "answer, action, shown, fit",
    [
        ({"ca": "yes", "why": ""}, "check", "yes", True),
        ({"ca": "no", "why": "the CA key is not in /etc/ssh/x.pub"}, "check", "NO", False),
        (
            {"ca": "trusted", "why": "added the key to /etc/ssh/x.pub, reloaded sshd"},
            "install",
            "TRUSTED",
            True,
        ),
        ({"ca": "would trust", "why": "would add the key"}, "dry-run", "would trust", True),
        ({"ca": "no", "why": "cannot write /x: it is a directory; nothing changed"}, "install", "NO", False),
        ({"ca": "not reloaded", "why": "no running sshd found"}, "install", "NOT RELOADED", False),
    ],
)
def test_the_ca_column_and_fitness_follow_the_answer(answer, action, shown, fit):
    report = deploy.NodeReport(Node("n1", "10.0.0.1"), "ok (root)", "apptainer 1.3.4", "ok", "current")
    deploy.judge_ca(report, answer, action)
    assert report.ca == shown and report.fit == fit
    said = report.problems + report.notes
    assert len(said) == (1 if answer["why"] else 0) and answer["why"] in "".join(said)
    assert ("run remote-singularity-spawner deploy" in "".join(said)) == (action == "check" and not fit)
    table = deploy.format_table([report]).splitlines()
    assert table[1].split()[-2:] == [*shown.split()[-1:], "yes" if fit else "NO"]


@pytest.mark.parametrize(
    "answer, shown, fit, said",
    [
        ({"ca": "not trusted", "why": ""}, "not trusted", True, ""),
        ({"ca": "untrusted", "why": "removed the key from /etc/ssh/x.pub"}, "REMOVED", True, "note"),
        ({"ca": "would untrust", "why": "would remove the key"}, "would remove", True, "note"),
        ({"ca": "no", "why": "remove this line from /etc/ssh/site.pub"}, "NOT REMOVED", False, "problem"),
    ],
)
def test_the_untrust_column_and_fitness_follow_the_answer(answer, shown, fit, said):
    report = deploy.NodeReport(Node("n1", "10.0.0.1"), "ok (root)", "apptainer 1.3.4", "ok", "current")
    deploy.judge_untrust(report, answer)
    assert report.untrust == shown and report.fit == fit
    assert (len(report.notes), len(report.problems)) == {"": (0, 0), "note": (1, 0), "problem": (0, 1)}[said]
    assert all(answer["why"] in line for line in report.notes + report.problems)
    table = deploy.format_table([report]).splitlines()
    assert table[0].split() == ["NODE", "SSH", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "UNTRUST", "FIT"]
    assert table[1].endswith(f"{shown}  {'yes' if fit else 'NO'}")
    plain = deploy.NodeReport(Node("n2", "10.0.0.2"))
    assert "UNTRUST" not in deploy.format_table([plain]), "the column only when a CA was to be untrusted"


def test_a_ca_to_untrust_is_read_like_the_ca_to_trust_and_may_not_be_it(tmp_path):
    old, new = keygen(tmp_path / "old", comment="old ca"), keygen(tmp_path / "new")
    assert admin.public_key_line(f"{old}.pub", "--untrust-ca") == f"{public_part(old)} old ca"
    with pytest.raises(deploy.DeployError, match=r"^--untrust-ca .*/old is a private key"):
        admin.public_key_line(str(old), "--untrust-ca")
    untrust = (f"{public_part(old)} another comment", f"{old}.pub")
    s = settings(ca=(f"{public_part(new)} hub", "new.pub"), untrust=untrust)
    assert (s.untrust_key, s.untrust_source) == untrust
    with pytest.raises(deploy.DeployError, match=f"--untrust-ca {old}.pub is the CA to trust \\(old-ca\\)"):
        settings(ca=(public_part(old), "old-ca"), untrust=untrust)


@pytest.mark.parametrize("change, dry_run", [(False, False), (True, False), (True, True)])
def test_only_deploy_untrusts_and_only_when_asked(monkeypatch, change, dry_run):
    asked = []
    monkeypatch.setattr(deploy, "probe_node", lambda conn, s, b, role: probe())
    answer = {"ca": "untrusted", "why": ""}
    monkeypatch.setattr(deploy, "untrust_ca", lambda conn, s, b, dry: asked.append(dry) or answer)
    conn = SimpleNamespace(close=lambda: None)
    for given in (("", ""), (OLD_CA, "old.pub")):
        report = deploy.inspect_node(
            Node("n1", "10.0.0.1"), settings(untrust=given), BUNDLE, lambda n: conn, "root", change, dry_run
        )
        assert report.untrust == ("REMOVED" if given[0] and change else "-") and report.fit
    assert asked == ([dry_run] if change else [])


def test_the_json_report_of_a_node_has_its_columns_problems_notes_and_images():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"), "ok (root)", "apptainer 1.3.4", "MISSING", "current")
    report.problems.append("image /images/j.sif: missing")
    report.notes.append("CA: added the key")
    report.images.append("image j (/images/j.sif): missing")
    assert report_data(report) == {
        "node": "n1", "address": "10.0.0.1", "role": "compute", "ssh": "ok (root)", "slurm": "-",
        "runtime": "apptainer 1.3.4", "image": "MISSING", "scripts": "current", "ca": "-", "untrust": "-",
        "fit": False, "problems": ["image /images/j.sif: missing"], "notes": ["CA: added the key"],
        "images": ["image j (/images/j.sif): missing"],
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, dry_run, action",
    [(False, False, "check"), (True, False, "install"), (True, True, "dry-run")],
)
def test_each_node_is_asked_about_the_ca_only_when_one_is_given(monkeypatch, change, dry_run, action):
    asked = []
    monkeypatch.setattr(deploy, "probe_node", lambda conn, s, b, role: probe())
    monkeypatch.setattr(deploy, "trust_ca", lambda conn, s, b, act: asked.append(act) or {"ca": "yes"})
    conn = SimpleNamespace(close=lambda: None)
    for given in (("", ""), (CA, "ca.pub")):
        report = deploy.inspect_node(
            Node("n1", "10.0.0.1"), settings(ca=given), BUNDLE, lambda n: conn, "root", change, dry_run
        )
        assert report.ca == ("yes" if given[0] else "-") and report.fit
    assert asked == [action]


# --- placement slurm: the submit host and the nodes its sinfo lists ----------------------

SLURM_CONFIG = {"placement": "slurm", "singularity_container_path": "/images/j.sif"}


def sinfo_reply(*lines, **overrides):
    """check_node.sh --role submit's answer: the Slurm client there, sinfo listing *lines*."""
    return {"slurm_missing": "", "sinfo": "ok", "sinfo_error": "", "slurm_nodes": list(lines),
            **probe(**overrides)}  # fmt: skip


def no_resolving(name):
    raise AssertionError(f"{name!r} was looked up")


@pytest.mark.parametrize(
    "config, submit, nodes",
    [
        ({"slurm_submit_host": "login1:10.0.0.5"}, Node("login1", "10.0.0.5"), []),
        ({"nodelist": "n1:10.0.0.1,n2:10.0.0.2"}, Node("n1", "10.0.0.1"), ["n1", "n2"]),
        (
            {"slurm_submit_host": "login1:10.0.0.5", "nodelist": "n1:10.0.0.1"},
            Node("login1", "10.0.0.5"),
            ["n1"],
        ),
    ],
)
def test_placement_slurm_names_the_submit_host_and_nodelist_becomes_optional(config, submit, nodes):
    s, warnings = deploy.make_settings({**SLURM_CONFIG, **config})
    assert s.submit_host == submit and warnings == []
    assert [n.label for n in s.nodes] == nodes, "nodelist: where Slurm's nodes are reached, if it names them"


def test_hosts_on_the_command_line_mean_no_submit_host_and_placement_ssh_none_either():
    config = {**SLURM_CONFIG, "nodelist": "n1:10.0.0.1"}
    assert deploy.make_settings(config, hosts=":10.0.0.9")[0].submit_host is None
    assert deploy.make_settings({**config, "placement": "ssh"})[0].submit_host is None


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "placement slurm and no submit host: set slurm_submit_host"),
        ({"nodelist": "bad_name:"}, "placement slurm and no submit host"),
        ({"slurm_submit_host": "login1"}, "slurm_submit_host 'login1' is not a valid name:ip record: "),
        ({"slurm_submit_host": "login1:10.0.0.300"}, "'10.0.0.300' is not a valid IP address"),
        ({"placement": "queue"}, "placement 'queue' must be 'ssh' or 'slurm'"),
    ],
)
def test_a_slurm_config_without_a_usable_submit_host_is_refused_naming_the_setting(config, message):
    with pytest.raises(deploy.DeployError, match=re.escape(message)):
        deploy.make_settings({**SLURM_CONFIG, **config})


def test_sinfos_nodes_are_reached_as_the_spawner_reaches_an_allocated_node():
    listed = [Node("n1", "10.0.0.1")]
    reply = sinfo_reply(
        "n1|n1.cluster",  # in nodelist: its address there, NodeAddr not even looked up
        "n1|n1.cluster",  # sinfo -N: once per partition
        "n2|10.0.0.2",  # an IP address
        "n3|n3.cluster",  # a name, resolved
        "n4|no-such-host",  # does not resolve
        "bad_name|10.0.0.7",  # not a host name
        "n5|10.0.0.5;reboot",  # neither
    )
    resolved = {"n3.cluster": "10.0.0.3"}

    def resolve(name):
        if name not in resolved:
            raise OSError("Name or service not known")
        return resolved[name]

    nodes, problems = slurm_hosts.compute_nodes(reply, listed, resolve)
    assert nodes == [Node("n1", "10.0.0.1"), Node("n2", "10.0.0.2"), Node("n3", "10.0.0.3")]
    assert problems == [
        "sinfo lists node 'n4' at 'no-such-host': not in nodelist, and its NodeAddr does not resolve "
        "(Name or service not known): not checked",
        "sinfo lists node 'bad_name' at '10.0.0.7': not a valid host name: not checked",
        "sinfo lists node 'n5' at '10.0.0.5;reboot': not in nodelist, and its NodeAddr is neither an IP "
        "address nor a host name: not checked",
    ]


@pytest.mark.parametrize(
    "reply, problem",
    [
        (sinfo_reply(), "sinfo lists no node: no compute node was checked"),
        (
            sinfo_reply(sinfo="failed", sinfo_error="Unable to contact slurm controller"),
            "sinfo cannot list the compute nodes (it failed: Unable to contact slurm controller): "
            "no compute node was checked",
        ),
        (
            sinfo_reply(sinfo="missing", slurm_missing="sinfo"),
            "sinfo cannot list the compute nodes (it is not on the PATH): no compute node was checked",
        ),
        (sinfo_reply(slurm_nodes="n1|10.0.0.1"), "sinfo lists no node: no compute node was checked"),
    ],
)
def test_a_sinfo_that_lists_nothing_is_one_problem_and_leaves_the_submit_host_alone(reply, problem):
    submit = Node("login1", "10.0.0.5")
    hosts, problems = slurm_hosts.find_hosts(submit, [], lambda node: reply, no_resolving)
    assert hosts == [(submit, "submit")] and problems == [problem]


def test_the_submit_host_comes_first_and_a_host_that_is_both_is_checked_once_in_both_roles():
    submit = Node("n1", "10.0.0.1")
    asked = []
    reply = sinfo_reply("n2|10.0.0.2", "node1|10.0.0.1", "n1|10.0.0.1", "n3|10.0.0.2")
    hosts, problems = slurm_hosts.find_hosts(submit, [], lambda n: asked.append(n) or reply, no_resolving)
    assert asked == [submit] and problems == []
    assert hosts == [(submit, "submit, compute"), (Node("n2", "10.0.0.2"), "compute")]


def test_a_submit_host_that_cannot_be_asked_is_checked_alone_and_says_why():
    def ask(node):
        raise remote.ConnectError("cannot connect to root@10.0.0.5:22: timed out")

    hosts, problems = slurm_hosts.find_hosts(Node("login1", "10.0.0.5"), [], ask, no_resolving)
    assert hosts == [(Node("login1", "10.0.0.5"), "submit")]
    assert problems == ["cannot list the compute nodes: cannot connect to root@10.0.0.5:22: timed out"]


# The compute role's words: the runtime, each image and the Hub's JupyterHub (to compare).
COMPUTE_WORDS = [
    "--exe", "singularity", "--image", "/images/j.sif", "--hub-jupyterhub", jupyterhub.__version__,
    "--scripts-dir", "/o/s/v1",
]  # fmt: skip


@pytest.mark.parametrize(
    "role, words",
    [
        ("compute", COMPUTE_WORDS),
        ("submit", ["--role", "submit", "--scripts-dir", "/o/s/v1"]),
        ("submit, compute", ["--role", "submit,compute", *COMPUTE_WORDS]),
    ],
)
def test_check_node_sh_is_asked_for_the_hosts_role(monkeypatch, role, words):
    sent = []

    def run_command(conn, command, stdin="", **kwargs):
        sent.append(shlex.split(command))
        return remote.Reply(0, {"scripts": "missing"})

    monkeypatch.setattr(remote, "run_command", run_command)
    deploy.probe_node(None, settings(node_scripts_dir="/o/s"), BUNDLE_SH, role)
    assert sent[0][4:6] == ["-s", "--"] and sent[0][6:] == words


BUNDLE_SH = remote.ScriptBundle(files={"common.sh": b"", "check_node.sh": b""}, version="v1")


@pytest.mark.parametrize(
    "role, reply, shown, problems",
    [
        ("submit", sinfo_reply(runtime="", image="missing"), ("ok", "-", "-"), []),
        (
            "submit",
            sinfo_reply(slurm_missing="scancel sinfo"),
            ("MISSING", "-", "-"),
            ["the Slurm client is incomplete: scancel, sinfo not on the login PATH (users run them here)"],
        ),
        (
            "submit, compute",
            sinfo_reply(image="missing"),
            ("ok", "apptainer 1.3.4", "MISSING"),
            ["image /images/j.sif: missing"],
        ),
        ("compute", probe(), ("-", "apptainer 1.3.4", "ok"), []),
    ],
)
def test_a_submit_host_is_judged_by_its_slurm_client_not_by_runtime_or_image(role, reply, shown, problems):
    report = deploy.NodeReport(Node("n1", "10.0.0.1"), role=role)
    assert deploy.judge(report, reply, settings(), BUNDLE) == "current"
    assert (report.slurm, report.runtime, report.image) == shown
    assert report.problems == problems and report.fit == (not problems)


def fake_cluster(monkeypatch, replies):
    """remote.connect and the node scripts answered from *replies*: {(address, role): probe}."""
    asked, ca = [], []
    opened = lambda target, log=None: SimpleNamespace(host=target.host, close=lambda: None)  # noqa: E731
    monkeypatch.setattr(remote, "connect", opened)
    monkeypatch.setattr(remote.ScriptBundle, "load", staticmethod(lambda directory: BUNDLE))

    def probe_node(conn, s, b, role):
        asked.append((conn.host, role))
        return replies[(conn.host, role)]

    monkeypatch.setattr(deploy, "probe_node", probe_node)
    monkeypatch.setattr(deploy, "trust_ca", lambda conn, s, b, action: ca.append((conn.host, action)) or
                        {"ca": "trusted", "why": ""})  # fmt: skip
    return asked, ca


def test_deploy_with_placement_slurm_checks_the_submit_host_and_every_node_sinfo_lists(monkeypatch):
    listing = sinfo_reply("n1|10.0.0.1", "n2|10.0.0.2", "n1|10.0.0.1")
    replies = {
        ("10.0.0.1", "submit"): listing,
        ("10.0.0.1", "submit, compute"): listing,
        ("10.0.0.2", "compute"): probe(image="missing"),
    }
    asked, ca = fake_cluster(monkeypatch, replies)
    s = deploy.make_settings({**SLURM_CONFIG, "nodelist": "n1:10.0.0.1"}, ca=(CA, "ca.pub"))[0]
    reports, _ = deploy.run(s, "root", [], change=True)
    assert [(r.node.label, r.role) for r in reports] == [("n1", "submit, compute"), ("n2", "compute")]
    assert asked[0] == ("10.0.0.1", "submit"), "sinfo first, before any other host is contacted"
    assert sorted(ca) == [("10.0.0.1", "install"), ("10.0.0.2", "install")], "every host trusts the CA"
    assert [r.fit for r in reports] == [True, False]
    lines = deploy.format_table(reports).splitlines()
    assert lines[0].split() == ["NODE", "ROLE", "SSH", "SLURM", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"]
    assert lines[1].split() == ["n1", "(10.0.0.1)", "submit,", "compute", "ok", "(root)", "ok", "apptainer",
                                "1.3.4", "ok", "current", "TRUSTED", "yes"]  # fmt: skip
    assert lines[2].split()[2:5] == ["compute", "ok", "(root)"] and lines[2].split()[5] == "-"
    assert lines[3] == "n2: image /images/j.sif: missing"


def test_a_submit_host_whose_sinfo_lists_nothing_is_unfit_and_says_so_in_one_line(monkeypatch):
    empty = sinfo_reply(runtime="", image="missing")
    asked, _ = fake_cluster(monkeypatch, {("10.0.0.5", "submit"): empty})
    s = deploy.make_settings({**SLURM_CONFIG, "slurm_submit_host": "login1:10.0.0.5"})[0]
    reports, _ = deploy.run(s, "root", [])
    assert asked == [("10.0.0.5", "submit")] * 2, "no other host"
    (report,) = reports
    assert not report.fit and report.problems == ["sinfo lists no node: no compute node was checked"]
    lines = deploy.format_table(reports).splitlines()
    assert lines[1].split() == ["login1", "(10.0.0.5)", "submit", "ok", "(root)", "ok", "-", "-", "current",
                                "-", "NO"]  # fmt: skip
    assert lines[2:] == ["login1: sinfo lists no node: no compute node was checked"]


# --- images: each listed per node, with its JupyterHub against the Hub's --------------------

IMAGES_CONFIG = {
    "nodelist": "n1:10.0.0.1",
    "images": [
        {"name": "base", "path": "/images/base.sif"},
        {"name": "older", "path": "/images/older.sif", "groups": ["ml"]},
        {"name": "old", "path": "/images/old.sif"},
    ],
}


def image_found(path, jupyterhub_version, match, state="ok", for_all=True):
    return {
        "path": path,
        "state": state,
        "for_all": for_all,
        "jupyterhub": jupyterhub_version,
        "match": match,
    }


def test_check_asks_for_every_image_of_the_config():
    configured = deploy.make_settings(IMAGES_CONFIG)[0]
    assert [path for _, path in configured.images] == [
        "/images/base.sif",
        "/images/older.sif",
        "/images/old.sif",
    ]
    assert deploy.make_settings(IMAGES_CONFIG, image="/other.sif")[0].images == (("other", "/other.sif"),)


def test_a_callable_images_is_not_guessed_and_the_admin_is_told():
    config = {"nodelist": "n1:10.0.0.1", "images": print, "singularity_container_path": "/images/j.sif"}
    configured, warnings = deploy.make_settings(config)
    assert configured.images == (("j", "/images/j.sif"),)
    assert any("images is a callable" in w and "--image" in w for w in warnings)


def test_a_bad_images_entry_is_named_before_anything_is_contacted():
    config = {**IMAGES_CONFIG, "images": [{"name": "x y", "path": "/a.sif"}]}
    with pytest.raises(deploy.DeployError, match=r"images\[0\]: name 'x y'"):
        deploy.make_settings(config)


def test_each_image_is_listed_with_its_jupyterhub_and_whether_it_matches_the_hub():
    ours = jupyterhub.__version__
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    found = [
        image_found("/images/base.sif", ours, "same"),
        image_found("/images/older.sif", "6.0.1", "minor", for_all=False),
        image_found("/images/old.sif", "5.5.4", "major"),
    ]
    deploy.judge(report, probe(images=found), deploy.make_settings(IMAGES_CONFIG)[0], BUNDLE)
    assert report.image == "2/3 ok (SEE BELOW)" and not report.fit
    assert report.problems == [
        f"image old (/images/old.sif) carries JupyterHub 5.5.4, the Hub runs {ours}: "
        f"install jupyterhub=={ours} in it"
    ]
    lines = deploy.format_table([report]).splitlines()
    assert lines[-3:] == [
        f"n1: image base (/images/base.sif): present, readable, JupyterHub {ours}, matches the Hub",
        "n1: image older (/images/older.sif): present, readable (not by all), JupyterHub 6.0.1, another "
        "minor version than the Hub's (works, warns)",
        "n1: image old (/images/old.sif): present, readable, JupyterHub 5.5.4, ANOTHER MAJOR VERSION than "
        "the Hub's: its servers are refused",
    ]
    assert "n1: note: /images/older.sif is not readable by all users: check its group" in lines


def test_a_missing_image_among_several_makes_the_node_unfit():
    report = deploy.NodeReport(Node("n1", "10.0.0.1"))
    found = [image_found("/images/base.sif", jupyterhub.__version__, "same"),
             image_found("/images/older.sif", "", "unknown", state="missing"),
             image_found("/images/old.sif", "", "unknown")]  # fmt: skip
    deploy.judge(report, probe(images=found), deploy.make_settings(IMAGES_CONFIG)[0], BUNDLE)
    assert report.image == "2/3 ok (SEE BELOW)"
    assert report.problems == ["image /images/older.sif: missing"]
    assert "n1: image old (/images/old.sif): present, readable, JupyterHub unknown" in deploy.format_table(
        [report]
    )
