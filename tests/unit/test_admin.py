"""The admin command in the wheel: `remote-singularity-spawner check|deploy`, its options and exit status.

It is an argparse front end over the Invoke tasks that `invoke check|deploy` runs in a
clone. Each trap of Invoke's own Program (its core options, --dry that ran anyway, -h for
--hosts, --config before the command read as Invoke's config, exit 1 for everything) has
a test here. No cluster: the nodes are closed loopback ports, or nothing is contacted.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from remotesingularityspawner.admin import command, deploy, report
from remotesingularityspawner.placement.nodes import Node

ROOT = Path(__file__).resolve().parents[2]
CHECK_OPTIONS = ["--hosts", "--config", "--user", "--key", "--known-hosts", "--image", "--exe",
                 "--node-scripts-dir", "--timeout", "--trust-ca", "--sshd-config", "--json"]  # fmt: skip
DEPLOY_OPTIONS = [*CHECK_OPTIONS[:-1], "--untrust-ca", "--dry-run", "--json"]


def admin_command(*args):
    return subprocess.run(
        [sys.executable, "-c", "from remotesingularityspawner.admin.command import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def login_key(tmp_path_factory):
    key = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return str(key)


def closed_port():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def listening():
    """A loopback port that tells whether anything connected to it: (port, contacted())."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)

        def contacted():
            try:
                s.accept()[0].close()
                return True
            except BlockingIOError:
                return False

        yield s.getsockname()[1], contacted


def hub_config(path, port, node="n1:127.0.0.1"):
    path.write_text(
        f"c.RemoteSingularitySpawner.nodelist = {node!r}\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n"
        f"c.RemoteSingularitySpawner.ssh_port = {port}\n"
    )
    return str(path)


def help_options(text):
    """{--option: its help text, joined} from a --help output's options section."""
    found, current = {}, None
    for line in text[text.index("options:") :].splitlines()[1:]:
        match = re.match(r"  (-h, --help|--[a-z-]+)( [A-Z_]+)?(?:  +(.*))?$", line)
        if match:
            current = match[1].split(", ")[-1]
            found[current] = match[3] or ""
        elif line.startswith("      ") and current:
            found[current] += " " + line.strip()
        else:
            current = None
    return found


# --- the package: the console script, and invoke in a clone ------------------------------


def test_pip_install_gives_the_admin_command_with_check_and_deploy(tmp_path):
    # A fresh venv that sees this Python's packages (jupyterhub, fabric: no download),
    # into which pip installs this package as an admin does.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
        check=True,
        capture_output=True,
    )
    command_path = venv / "bin" / "remote-singularity-spawner"
    assert command_path.exists(), "no console script after pip install"
    for task, option in (("check", "--hosts NODES"), ("deploy", "--dry-run")):
        argv = [command_path, task, "--help"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert out.startswith(f"usage: remote-singularity-spawner {task} [-h]")
        assert option in out and "--config FILE" in out
    listing = subprocess.run([command_path, "--help"], capture_output=True, text=True, check=True).stdout
    assert "check" in listing and "deploy" in listing and "--core-opts" not in listing


def test_invoke_in_a_clone_runs_the_same_tasks(tmp_path):
    for task in (command.check, command.deploy):
        argv = [sys.executable, "-m", "invoke", task.name, "--help"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert task.__doc__.strip().splitlines()[0] in out
        assert "--config" in out and ("--untrust-ca" in out) == (task is command.deploy)
    # The same exit status as the console script: a config it cannot use is 2.
    argv = [sys.executable, "-m", "invoke", "check", "--config", str(tmp_path / "none.py")]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and f"error: no such config file: {tmp_path}/none.py" in out.stderr


# --- only the options that apply ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["--dry", "deploy"], "--dry"),  # Invoke's "echo commands instead of running"
        (["-R", "deploy"], "-R"),
        (["deploy", "--dry"], "--dry"),  # no abbreviation of --dry-run either
        (["check", "--dry-run"], "--dry-run"),  # check changes nothing: no dry run to ask for
        (["--echo", "check"], "--echo"),
        (["--list"], "--list"),
        (["-c", "tasks.py", "check"], "-c"),
        (["-d", "deploy"], "-d"),
        (["deploy", "-d"], "-d"),
        (["check", "--conf", "x.py"], "--conf"),
    ],
)
def test_invokes_core_options_are_gone_a_usage_error_and_nothing_contacted(tmp_path, argv, unknown):
    with listening() as (port, contacted):
        config = hub_config(tmp_path / "jupyterhub_config.py", port)
        out = admin_command(*argv, "--config", config, "--timeout", "3")
        assert out.returncode == command.ExitStatus.CANNOT_RUN == 2, out.stdout + out.stderr
        assert "usage: remote-singularity-spawner" in out.stderr
        assert re.search(rf"error: unrecognized arguments: .*{re.escape(unknown)}|invalid choice", out.stderr)
        assert out.stdout == "" and not contacted(), "no node was asked"


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_the_config_is_taken_before_or_after_the_command_the_commands_wins(tmp_path, login_key, where):
    port = closed_port()
    config = hub_config(tmp_path / "jupyterhub_config.py", port, node="rss-n1:127.0.0.1")
    missing = str(tmp_path / "missing.py")
    argv = {
        "before": ["--config", config, "check"],
        "after": ["check", "--config", config],
        "both": ["--config", missing, "check", "--config", config],
    }[where]
    out = admin_command(*argv, "--key", login_key, "--timeout", "3")
    # Read as the Hub's config: its node, port and image (Invoke's Program read it as its own).
    assert out.returncode == command.ExitStatus.UNFIT == 1, out.stdout + out.stderr
    assert "image /x.sif, runtime singularity" in out.stdout
    assert f"rss-n1: cannot connect to root@127.0.0.1:{port}" in out.stdout
    assert "not fit for servers: rss-n1" in out.stderr
    out = admin_command("--config", config, "check", "--config", missing)
    assert out.returncode == 2 and f"error: no such config file: {missing}" in out.stderr


@pytest.mark.parametrize("argv", [[], ["check"], ["deploy"]])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_h_is_help_everywhere_and_each_option_shows_its_default(tmp_path, argv, flag):
    with listening() as (port, contacted):
        config = hub_config(tmp_path / "jupyterhub_config.py", port)
        out = admin_command("--config", config, *argv, flag)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert out.stdout.startswith(f"usage: {' '.join(['remote-singularity-spawner', *argv])} [-h]")
        assert not contacted()
    options = help_options(out.stdout)
    expected = {"check": CHECK_OPTIONS, "deploy": DEPLOY_OPTIONS}.get(argv[0] if argv else "", ["--version",
                "--config"])  # fmt: skip
    assert list(options) == ["--help", *expected]
    shorts = re.findall(r"\[(-[A-Za-z])[] ]", out.stdout) + re.findall(r"^  (-[A-Za-z])\b", out.stdout, re.M)
    assert set(shorts) == {"-h"}, "no other short option, in the usage or the options"
    for option, text in options.items():
        if option not in ("--help", "--version", "--dry-run", "--json"):  # flags: off unless given
            assert "default" in text, f"{option}: {text}"
    if argv:
        assert "(default: 10)" in options["--timeout"] and "(default root:" in options["--user"]
        assert options["--hosts"].startswith("the nodes, comma separated")
    assert "exit status:\n  0  every node is fit for servers\n  1  a node is unfit" in out.stdout
    assert "\n  2  could not run: a bad command line, an unusable config" in out.stdout


# --- exit status: 0 fit, 1 unfit, 2 could not run ---------------------------------------


def fake_run(monkeypatch, *fit, called=None):
    """deploy.run answering one report per node, fit or not, without any SSH."""

    def run(settings, user, keys, change=False, dry_run=False, connect_timeout=10.0):
        if called is not None:
            called.append((change, dry_run))
        reports = []
        for i, ok in enumerate(fit):
            found = report.NodeReport(Node(f"n{i + 1}", f"10.0.0.{i + 1}"), "ok (root)", "apptainer 1.3.4",
                                      "ok" if ok else "MISSING", "current")  # fmt: skip
            found.problems += [] if ok else ["image /x.sif: missing"]
            found.images.append(f"image x (/x.sif): {'present, readable' if ok else 'missing'}")
            reports.append(found)
        return reports, deploy.load_bundle(settings.scripts_dir)

    monkeypatch.setattr(deploy, "run", run)


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        command.main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("fit, status", [((True, True), 0), ((True, False), 1)])
def test_exit_status_0_when_every_node_is_fit_1_when_one_is_not(monkeypatch, capsys, login_key, fit, status):
    fake_run(monkeypatch, *fit)
    code, out, err = run_main(capsys, "check", "--hosts", "n1:10.0.0.1,n2:10.0.0.2", "--image", "/x.sif",
                              "--key", login_key)  # fmt: skip
    assert code == status == command.ExitStatus(status)
    assert out.splitlines()[3].split() == ["NODE", "SSH", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"]
    assert ("not fit for servers: n2" in err) == (status == 1)


def test_exit_status_1_for_an_unreachable_node(tmp_path, login_key):
    port = closed_port()
    out = admin_command("check", "--hosts", "n1:127.0.0.1", "--image", "/x.sif", "--key", login_key,
                        "--timeout", "3", "--config", hub_config(tmp_path / "c.py", port))  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.splitlines()[-2].split()[:3] == ["n1", "(127.0.0.1)", "DOWN"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "--config", "NO_IMAGE"], "error: no image: give --image or set singularity_container"),
        (["check", "--config", "GOOD", "--timeout", "soon"], "argument --timeout: invalid int value: 'soon'"),
        (["check", "--config", "GOOD", "--timeout", "0"], "error: --timeout 0: give a number of seconds"),
        (["check", "--config", "GOOD", "--key", "/none/id_rsa"], "error: --key /none/id_rsa: no such file"),
        (["deploy", "--config", "GOOD", "--trust-ca", "/none/c.pub"], "error: --trust-ca /none/c.pub"),
        (["deploy", "--config", "GOOD", "--untrust-ca", "/none/o.pub"], "error: --untrust-ca /none/o.pub"),
        (["check", "--config", "BROKEN"], "error: cannot read BROKEN: SyntaxError"),
        (["check", "--config", "NO_NODE"], "error: no node to check: give --hosts or a --config"),
        (["check", "--image", "/x.sif"], "error: no node to check"),
        (["--config", "GOOD"], "error: the following arguments are required: COMMAND"),
        (["status", "--config", "GOOD"], "argument COMMAND: invalid choice: 'status'"),
    ],
)
def test_exit_status_2_when_it_cannot_run_and_no_node_is_contacted(tmp_path, login_key, argv, message):
    with listening() as (port, contacted):
        configs = {
            "GOOD": hub_config(tmp_path / "good.py", port),
            "NO_IMAGE": tmp_path / "no_image.py",
            "BROKEN": tmp_path / "broken.py",
            "NO_NODE": tmp_path / "no_node.py",
        }
        configs["NO_IMAGE"].write_text(
            "c.RemoteSingularitySpawner.nodelist = 'n1:127.0.0.1'\n"
            f"c.RemoteSingularitySpawner.ssh_port = {port}\n"
        )
        configs["BROKEN"].write_text("c.RemoteSingularitySpawner.nodelist = \n")
        configs["NO_NODE"].write_text("c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n")
        argv = [str(configs.get(a, a)) for a in argv]
        key = ["--key", login_key] if argv[0] in ("check", "deploy") and "--key" not in argv else []
        out = admin_command(*argv, *key)
        assert out.returncode == command.ExitStatus.CANNOT_RUN == 2, out.stdout + out.stderr
        assert message.replace("BROKEN", str(configs["BROKEN"])) in out.stderr
        assert out.stdout == "" and not contacted(), "no node was asked"


def test_a_failure_of_its_own_is_2_not_an_unfit_node(monkeypatch, capsys, login_key):
    def run(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(deploy, "run", run)
    code, _, err = run_main(capsys, "check", "--hosts", ":10.0.0.1", "--image", "/x.sif", "--key", login_key)
    assert code == 2 and "RuntimeError: a bug" in err


def test_a_slurm_config_without_a_submit_host_is_refused_before_any_connection(tmp_path):
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(
        "c.RemoteSingularitySpawner.placement = 'slurm'\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n"
    )
    out = admin_command("deploy", "--config", str(cfg))
    assert out.returncode == 2
    assert "error: placement slurm and no submit host: set slurm_submit_host (name:ip)" in out.stderr


def test_with_placement_slurm_a_submit_host_that_cannot_be_asked_is_unfit_and_no_node_is_checked_silently(
    tmp_path, login_key
):
    port = closed_port()
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(
        "c.RemoteSingularitySpawner.placement = 'slurm'\n"
        "c.RemoteSingularitySpawner.slurm_submit_host = 'login1:127.0.0.1'\n"
        "c.RemoteSingularitySpawner.nodelist = 'n1:127.0.0.2'\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n"
        f"c.RemoteSingularitySpawner.ssh_port = {port}\n"
    )
    out = admin_command("check", "--config", str(cfg), "--key", login_key, "--timeout", "3")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "placement slurm: submit host login1 (127.0.0.1) and the nodes its sinfo lists" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("NODE", "login1 (", "n1 "))]
    assert rows == [
        ["NODE", "ROLE", "SSH", "SLURM", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"],
        ["login1", "(127.0.0.1)", "submit", "DOWN", "-", "-", "-", "-", "-", "NO"],
    ], out.stdout
    assert f"login1: cannot list the compute nodes: cannot connect to root@127.0.0.1:{port}" in out.stdout
    assert "not fit for servers: login1" in out.stderr + out.stdout


# --- --json, --dry-run, --untrust-ca -------------------------------------------------------


def test_json_prints_the_reports_instead_of_the_table(monkeypatch, capsys, login_key):
    fake_run(monkeypatch, True, False)
    code, out, err = run_main(capsys, "check", "--json", "--hosts", "n1:10.0.0.1,n2:10.0.0.2", "--image",
                              "/x.sif", "--key", login_key)  # fmt: skip
    assert code == 1 and err == "not fit for servers: n2\n"
    document = json.loads(out)  # all of stdout: no table, no header lines
    assert document["fit"] is False and document["dry_run"] is False and document["ca"] is None
    n1, n2 = document["nodes"]
    assert n1 == {
        "node": "n1", "address": "10.0.0.1", "role": "compute", "ssh": "ok (root)", "slurm": "-",
        "runtime": "apptainer 1.3.4", "image": "ok", "scripts": "current", "ca": "-", "untrust": "-",
        "fit": True, "problems": [], "notes": [], "images": ["image x (/x.sif): present, readable"],
    }  # fmt: skip
    assert n2["fit"] is False and n2["problems"] == ["image /x.sif: missing"]


def test_deploy_dry_run_is_the_one_dry_option_and_reaches_the_nodes_as_a_dry_run(
    monkeypatch, capsys, login_key, tmp_path
):
    called = []
    fake_run(monkeypatch, True, called=called)
    old = tmp_path / "old"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "old", "-f", str(old)], check=True)
    base = ["--hosts", "n1:10.0.0.1", "--image", "/x.sif", "--key", login_key]
    code, out, _ = run_main(capsys, "deploy", *base, "--dry-run", "--untrust-ca", f"{old}.pub")
    assert code == 0 and called == [(True, True)]
    assert "(dry run: nothing changed)" in out.splitlines()[0]
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{old}.pub"], capture_output=True, text=True)
    assert f"untrusting CA {fingerprint.stdout.split()[1]} from {old}.pub" in out
    code, _, _ = run_main(capsys, "check", *base)
    assert code == 0 and called[-1] == (False, False)
    code, _, err = run_main(capsys, "deploy", *base, "--trust-ca", f"{old}.pub", "--untrust-ca", f"{old}.pub")
    assert code == 2 and f"--untrust-ca {old}.pub is the CA to trust" in err and len(called) == 2
