"""Fixtures for the end-to-end tests: the test cluster and a real Hub.

The cluster (network + PID namespaces with their own sshd) is brought up once
per session; a Hub with this spawner runs against it. When a test fails, the
Hub's log and the nodes' sshd logs are printed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import cluster as cluster_mod
import pytest
import requests
from harness import Hub

USERS = {"rss-alice": "ed25519", "rss-bob": "ecdsa", "rss-carol": "rsa"}


# Swept after everything else: every text the run showed users (test_user_texts.py).
SWEEP = "test_no_user_facing_text_shows_what_only_administrators_should_see"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.name == SWEEP)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests build network namespaces and users: run them as root")
    with cluster_mod.exclusive(lambda: print("waiting for another run to release the test cluster")):
        yield cluster_mod.up()


def nodelist(c) -> str:
    return ",".join(f"{n.name}:{n.ip}" for n in c.nodes)


def make_hub(c, workdir: Path, offset: int = 0, **kwargs) -> Hub:
    shutil.rmtree(workdir, ignore_errors=True)
    return Hub(
        workdir=workdir,
        hub_ip=c.hub_ip,
        nodelist=nodelist(c),
        singularity=str(c.singularity),
        image=str(c.image),
        public_port=18000 + offset,
        hub_port=18081 + offset,
        proxy_api_port=18001 + offset,
        **kwargs,
    )


@pytest.fixture(scope="session")
def hub(cluster, tmp_path_factory):
    # Poll often, so a test sees the Hub notice a dead server within seconds.
    h = make_hub(cluster, tmp_path_factory.mktemp("hub"), extra_config="c.Spawner.poll_interval = 3")
    h.start()
    for user in USERS:
        h.ensure_user(user)
    yield h
    h.stop()


@pytest.fixture
def alt_hub(cluster, tmp_path):
    """A second Hub with a different configuration: alt_hub(extra_config) starts it."""
    started = []

    def start(extra_config: str, **kwargs) -> Hub:
        h = make_hub(cluster, tmp_path / "alt-hub", offset=100, extra_config=extra_config, **kwargs)
        started.append(h)
        h.start()
        for user in USERS:
            h.ensure_user(user)
        return h

    yield start
    for h in started:
        h.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "hub" in item.fixturenames:
        hub = item.funcargs.get("hub")
        if hub is not None:
            report.sections.append(("Hub log (tail)", hub.log_tail(120)))
        for node in cluster_mod.describe().nodes:
            try:
                text = node.sshd_log.read_text(errors="replace").splitlines()[-30:]
            except (OSError, AttributeError):
                continue
            report.sections.append((f"sshd log of {node.name}", "\n".join(text)))
        for node in cluster_mod.describe().nodes:  # the sshd without sftp, when it was used
            try:
                text = node.nosftp_sshd_log.read_text(errors="replace").splitlines()[-30:]
            except (OSError, AttributeError):
                continue
            if any("Accepted publickey" in line for line in text):
                report.sections.append((f"sshd log of {node.name} without sftp", "\n".join(text)))
    return report


def user_processes(node: str, user: str) -> list[dict]:
    """The processes of *user* on *node*, as seen inside the node."""
    return [p for p in cluster_mod.node_processes(node) if p["user"] == user]


def servers_of(node: str, user: str) -> list[dict]:
    """The single-user server processes (not the runtime or bwrap around them)."""
    return [p for p in user_processes(node, user) if p["comm"].startswith("jupyterhub-sing")]


def wait_until(predicate, timeout=30, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def nothing_left(node, user):
    """No process of *user* on *node* but the sshd session that is closing."""
    return not [p for p in user_processes(node, user) if not p["comm"].startswith("sshd")]


def spawn_failure(hub, user, options):
    r = hub.spawn(user, options=options)
    if r.status_code == 202:
        final = hub.progress_events(user)[-1]
        assert final.get("failed"), final
        return final["message"]
    assert r.status_code >= 400, r.text
    return r.json()["message"]


def login(hub, user):
    """Log in through the login form, as a browser does; returns the session."""
    session = requests.Session()
    page = session.get(f"{hub.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = session.post(
        f"{hub.url}/hub/login",
        data={"username": user, "password": hub.password, "_xsrf": xsrf},
        timeout=30,
    )
    assert r.ok and "/hub/login" not in r.url, r.url
    return session
