"""The admin command in the wheel: `remote-singularity-spawner check|deploy`, as `invoke` has them."""

from __future__ import annotations

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
