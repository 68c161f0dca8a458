"""Two audiences for every failure: the user reads a sentence naming the node and what they
can do; the Hub's log carries the paths, modes, exceptions and fixes.

The failures only administrators can fix are provoked here (the CA key unusable, a
certificate the nodes refuse, a home the Hub cannot read, a stop that fails); then every
text any test of this run showed a user (harness.USER_TEXTS: REST replies to spawns and
stops, spawn progress) is swept for what a user must not see. Run with the whole e2e
suite, the sweep covers every failure the suite provokes: conftest.py runs it last.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import cluster as cluster_mod
import harness
from conftest import make_hub, nothing_left, spawn_failure, user_processes, wait_until
from test_certificate_mode import (  # noqa: F401 - fixtures
    HUB_ACCOUNT,
    USERS,
    cert_hub,
    hub_account,
    hub_python,
    keyless_users,
    new_ca,
    trusted_ca,
    workroot,
)
from test_spawn import NODE1

from remotesingularityspawner import remote

# What each provoked failure shows the user (checked below, and found again by the sweep).
CA_UNUSABLE = f"Cannot start your server on {NODE1}: {remote.certificates.CA_UNUSABLE}"
CERTIFICATE_REFUSED = "with a certificate of the Hub's CA refused"
HOME_UNREADABLE = "the Hub cannot read your SSH key in your home directory"
PROVOKED: set[str] = set()


def sweep_patterns(tmp_root: str) -> dict[str, re.Pattern]:
    """What no user-facing text may hold, by what it would reveal."""
    hub_dirs = [
        tmp_root,
        sys.prefix,
        str(cluster_mod.CONFIG.state_dir),
        "/var/tmp/rss-",
        "/etc/ssh/",
        "/root/",
    ]
    return {
        "a path on the Hub host": re.compile(
            "|".join(re.escape(d) for d in hub_dirs) + r"|/home/[^/\s]+/\.ssh/"
        ),
        "an exception's repr": re.compile(r"\b\w*(Error|Exception): |\[Errno \d+\]"),
        "a dict or set repr": re.compile(r"[{}]"),
        "a traceback": re.compile(r"Traceback"),
        "the node's environment": re.compile(r"\bPATH="),
    }


def spawn_with_ca(cluster, root, account, python, ca, name) -> tuple[str, str]:
    """(the user's message, the Hub's log) of a spawn by a certificate Hub with *ca*."""
    hub = cert_hub(cluster, root, account, python, ca, name, 50)
    hub.start()
    try:
        hub.ensure_user(USERS[0])
        return spawn_failure(hub, USERS[0], {"host": NODE1}), hub.log_path.read_text()
    finally:
        hub.stop()


def test_an_unusable_ca_key_shows_the_user_a_sentence_and_the_log_the_path_and_mode(
    cluster, workroot, hub_account, hub_python, keyless_users  # noqa: F811
):  # fmt: skip
    ca = new_ca(workroot, hub_account, "mode-ca")
    os.chmod(ca, 0o644)  # readable by all: the spawner refuses to use it
    message, log = spawn_with_ca(cluster, workroot, hub_account, hub_python, ca, "hub-mode-ca")
    assert message.endswith(CA_UNUSABLE), message  # from the REST reply or the progress
    assert f"c.RemoteSingularitySpawner.ssh_ca_key_file: {ca}" in log and "0644" in log, log[-2000:]
    PROVOKED.add("the CA key")


def test_a_refused_certificate_shows_the_user_what_the_node_refused_without_the_ca_path(
    cluster, workroot, hub_account, hub_python, keyless_users  # noqa: F811
):  # fmt: skip
    ca = new_ca(workroot, hub_account, "untrusted-ca", "never_deployed")
    message, log = spawn_with_ca(cluster, workroot, hub_account, hub_python, ca, "hub-refused")
    assert CERTIFICATE_REFUSED in message and "trust that CA" in message, message
    assert str(ca) not in message
    assert f"with a certificate of the Hub's CA ({ca}) refused" in log
    assert nothing_left(NODE1, USERS[0])
    PROVOKED.add("a refused certificate")


def test_a_home_the_hub_cannot_read_is_not_called_a_missing_key(
    cluster, workroot, hub_account, hub_python  # noqa: F811
):  # fmt: skip
    # An unprivileged Hub with users' keys: as root on NFS with root_squash, it cannot enter
    # ~/.ssh (0700). The user must not be told to make a key they already have.
    user = "rss-alice"
    key_dir = cluster.user(user).home / ".ssh"
    assert key_dir.stat().st_mode & 0o077 == 0, "the test needs a private ~/.ssh"
    extra = f'c.RemoteSingularitySpawner.known_hosts_files = ["{cluster.known_hosts}"]\n'
    hub = make_hub(cluster, workroot / "hub-home", offset=460, extra_config=extra,
                   python=hub_python, run_as=HUB_ACCOUNT)  # fmt: skip
    hub.start()
    try:
        hub.ensure_user(user)
        message = spawn_failure(hub, user, {"host": NODE1})
        assert HOME_UNREADABLE in message and "administrators have been told" in message, message
        assert "no private key" not in message and "ssh-keygen" not in message
        log = hub.log_path.read_text()
        assert f"the Hub's account cannot read {key_dir}/" in log and "root_squash" in log, log[-2000:]
        PROVOKED.add("an unreadable home")
    finally:
        hub.stop()


def test_a_failed_stop_is_logged_for_the_admins_and_shows_the_user_no_exception(cluster, tmp_path):
    # A site's stop.sh that cannot stop the server, as when a process survives SIGKILL
    # (uninterruptible I/O on a hung file system): scripts_dir is the site's copy.
    scripts = tmp_path / "scripts"
    shutil.copytree(remote.packaged_scripts_dir(), scripts)
    (scripts / "stop.sh").write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        'source "${BASH_SOURCE[0]%/*}/common.sh"\n'
        'die "${RSS_EXIT_STOP_FAILED}" "still running after SIGKILL: 4242"\n'
    )
    extra = f'c.RemoteSingularitySpawner.scripts_dir = "{scripts}"\n'
    hub = make_hub(cluster, tmp_path / "hub", offset=470, extra_config=extra)
    hub.start()
    user = "rss-bob"
    try:
        hub.ensure_user(user)
        assert hub.spawn(user, options={"host": NODE1}).status_code in (201, 202)
        hub.wait_ready(user)
        hub.stop_server(user)
        where, shown = harness.USER_TEXTS[-1]
        assert where.startswith(f"DELETE /users/{user}/server"), where
        log = hub.log_path.read_text()
        assert "still running after SIGKILL: 4242" in log and "may still be running there" in log
        assert "Traceback" not in shown and "RuntimeError" not in shown, shown
        PROVOKED.add("a failed stop")
    finally:
        hub.stop()
        cluster_mod.node_run(NODE1, ["pkill", "-KILL", "-u", user], check=False)
        assert wait_until(lambda: nothing_left(NODE1, user)), user_processes(NODE1, user)


def test_no_user_facing_text_shows_what_only_administrators_should_see(tmp_path_factory):
    """Runs last (conftest.py): every text shown to a user in this run, swept."""
    assert PROVOKED == {"the CA key", "a refused certificate", "an unreadable home", "a failed stop"}, (
        f"not provoked in this run: {PROVOKED}"
    )
    texts = harness.USER_TEXTS
    assert any(CA_UNUSABLE in t for _, t in texts) and any(HOME_UNREADABLE in t for _, t in texts)
    assert any(CERTIFICATE_REFUSED in t for _, t in texts)
    patterns = sweep_patterns(str(tmp_path_factory.getbasetemp().parent))
    found = [
        f"{where}: {what}: {text[:300]!r}"
        for where, text in texts
        for what, pattern in patterns.items()
        if pattern.search(text)
    ]
    assert found == [], f"{len(found)} of {len(texts)} texts shown to users:\n" + "\n".join(found[:40])
