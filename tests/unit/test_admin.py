"""The admin command in the wheel: `remote-singularity-spawner check|deploy`, as `invoke` has them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
    command = venv / "bin" / "remote-singularity-spawner"
    assert command.exists(), "no console script after pip install"
    for task, option in (("check", "--hosts"), ("deploy", "--dry-run")):
        out = subprocess.run([command, task, "--help"], capture_output=True, text=True, check=True).stdout
        assert f"Usage: remote-singularity-spawner [--core-opts] {task}" in out
        assert option in out and "--config" in out
    listing = subprocess.run([command, "--list"], capture_output=True, text=True, check=True).stdout
    assert "check" in listing and "deploy" in listing


def test_invoke_in_a_clone_runs_the_same_tasks():
    argv = [sys.executable, "-m", "invoke", "check", "--help"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    from remotesingularityspawner.admin.command import check  # noqa: PLC0415

    assert check.__doc__.strip().splitlines()[0] in out


def test_a_bad_config_is_refused_before_any_connection(tmp_path):
    from remotesingularityspawner.admin.command import program  # noqa: PLC0415

    out = subprocess.run(
        [sys.executable, "-c", "from remotesingularityspawner.admin.command import main; main()",
         "check", "--hosts", "n1:10.0.0.1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert "error: no image: give --image or set singularity_container_path in the config" in out.stderr
    assert program.name == "remote-singularity-spawner"


def admin_command(*args):
    return subprocess.run(
        [sys.executable, "-c", "from remotesingularityspawner.admin.command import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_slurm_config_without_a_submit_host_is_refused_before_any_connection(tmp_path):
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(
        "c.RemoteSingularitySpawner.placement = 'slurm'\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n"
    )
    out = admin_command("deploy", "--config", str(cfg))
    assert out.returncode == 1
    assert "error: placement slurm and no submit host: set slurm_submit_host (name:ip)" in out.stderr


def test_with_placement_slurm_a_submit_host_that_cannot_be_asked_is_unfit_and_no_node_is_checked_silently(
    tmp_path,
):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(
        "c.RemoteSingularitySpawner.placement = 'slurm'\n"
        "c.RemoteSingularitySpawner.slurm_submit_host = 'login1:127.0.0.1'\n"
        "c.RemoteSingularitySpawner.nodelist = 'n1:127.0.0.2'\n"
        "c.RemoteSingularitySpawner.singularity_container_path = '/x.sif'\n"
        f"c.RemoteSingularitySpawner.ssh_port = {port}\n"
    )
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    out = admin_command("check", "--config", str(cfg), "--key", str(key), "--timeout", "3")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "placement slurm: submit host login1 (127.0.0.1) and the nodes its sinfo lists" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("NODE", "login1 (", "n1 "))]
    assert rows == [
        ["NODE", "ROLE", "SSH", "SLURM", "RUNTIME", "IMAGE", "SCRIPTS", "CA", "FIT"],
        ["login1", "(127.0.0.1)", "submit", "DOWN", "-", "-", "-", "-", "-", "NO"],
    ], out.stdout
    assert f"login1: cannot list the compute nodes: cannot connect to root@127.0.0.1:{port}" in out.stdout
    assert "not fit for servers: login1" in out.stderr + out.stdout
