"""`invoke demo`, as the README's quick start runs it (minus the cluster tear-down)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def run_demo(*flags: str) -> tuple[str, str]:
    """Run `invoke demo` until it is up, log in and fetch the spawn form, then Ctrl-C it.

    Returns (the form's HTML, what the demo printed after Ctrl-C).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "demo", "--port", "18700", "--keep-cluster", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        # Ctrl-C as in a terminal, however this suite was started: a background job of a
        # shell without job control inherits SIGINT ignored, and Python then ignores it too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        out = "".join(lines)
        assert "JupyterHub is up: http://127.0.0.1:18700" in out, out
        assert "test stand-in" in out, "the demo says plainly that it uses the stand-in"
        password = re.search(r"login: rss-demo\s+password: (\S+)", out).group(1)

        session = requests.Session()
        page = session.get("http://127.0.0.1:18700/hub/login", timeout=30)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        session.post(
            "http://127.0.0.1:18700/hub/login",
            data={"username": "rss-demo", "password": password, "_xsrf": xsrf},
            timeout=30,
        )
        form = session.get("http://127.0.0.1:18700/hub/spawn/rss-demo", timeout=30).text
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, rest
    assert "Demo stopped" in rest
    # Neither the demo's Hub nor its proxy is left running.
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [p for p in processes.splitlines() if "rss-demo-" in p or "18700" in p]
    return form, rest


def test_demo_prints_url_and_login_serves_the_form_and_stops_on_ctrl_c(cluster):
    form, _ = run_demo()
    assert re.findall(r'<option value="([^"]+)"', form) == ["rss-node1", "rss-node2"]
    # Two images: the Hub's JupyterHub and another minor version.
    assert re.findall(r'name="image"[^>]*value="([^"]+)"', form) == ["jupyter", "jupyter-older"]


def test_demo_with_slurm_offers_the_partitions_and_their_resources(cluster):
    form, _ = run_demo("--slurm")
    assert re.findall(r'<option value="([^"]+)"', form)[:2] == ["debug", "small"]
    assert 'name="cpus"' in form and 'name="memory"' in form and 'name="time"' in form
