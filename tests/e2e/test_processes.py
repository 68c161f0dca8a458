"""End to end: what is left running on a node when servers die, hang or are culled.

Every property is checked from inside the node (its own PID namespace), as a
sysadmin running `ps` there would see it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

import cluster as cluster_mod
import pytest
import requests
from conftest import nothing_left, spawn_failure, user_processes, wait_until

from remotesingularityspawner.spawner import RemoteSingularitySpawner

NODE1, NODE2 = "rss-node1", "rss-node2"
SINGLEUSER_PYTHON = "/opt/rss-singleuser/bin/python"


@pytest.fixture
def user_script(cluster):
    """user_script(user, name, text): an executable file in the user's home, as the server sees it."""
    made = []

    def write(user: str, name: str, text: str) -> str:
        u = cluster.user(user)
        directory = u.home / ".rss-test-processes"
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, u.uid, u.gid)
        path = directory / name
        path.write_text(text)
        os.chmod(path, 0o700)
        os.chown(path, u.uid, u.gid)
        made.append(directory)
        return str(path)

    yield write
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


def leftovers(node: str, user: str) -> list[dict]:
    return [p for p in user_processes(node, user) if not p["comm"].startswith("sshd")]


@contextmanager
def frozen(hub):
    """The Hub stopped (SIGSTOP): it cannot poll while a test rearranges a node."""
    os.kill(hub.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(hub.process.pid, signal.SIGCONT)


# Inside the node, as root: make PID $1 the next one handed out, then start the rest of
# argv detached (its own session, no tie to this shell) and print the PID it got.
_START_WITH_PID = (
    'echo "$(($1 - 1))" >/proc/sys/kernel/ns_last_pid; shift; "$@" </dev/null >/dev/null 2>&1 & echo "$!"'
)


def start_with_pid(node: str, user: str, pid: int, argv: list[str]) -> int:
    """Start argv as *user* on *node* with PID *pid* (forced through ns_last_pid)."""
    u = cluster_mod.describe().user(user)
    setpriv = ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups", "setsid"]
    for _ in range(5):  # another process may take the PID between the write and the fork
        got = cluster_mod.node_run(node, ["bash", "-c", _START_WITH_PID, "bash", str(pid), *setpriv, *argv])
        if int(got.stdout) == pid:
            return pid
        cluster_mod.node_run(node, ["kill", "-KILL", got.stdout.strip()])
    pytest.fail(f"could not start a process with PID {pid} on {node}")


def spawner_for(user: str, state: dict, **traits) -> RemoteSingularitySpawner:
    """This spawner, as a Hub would rebuild it from *state* (same defaults as the test Hubs)."""
    spawner = RemoteSingularitySpawner(user=SimpleNamespace(name=user, url=f"/user/{user}/", id=1), **traits)
    spawner.load_state(state)
    return spawner


def test_a_recycled_pid_is_not_mistaken_for_the_server(hub):
    user, node = "rss-alice", NODE1
    hub.spawn(user, options={"host": node})
    state = hub.wait_ready(user)["state"]
    pid = state["pid"]
    newcomer = ["sleep", "3001"]

    with frozen(hub):  # no poll may see the PID free: it must meet the newcomer
        cluster_mod.node_run(node, ["kill", "-KILL", "--", f"-{pid}"])
        assert wait_until(lambda: nothing_left(node, user)), leftovers(node, user)
        start_with_pid(node, user, pid, newcomer)
    try:
        [process] = leftovers(node, user)
        assert process["pid"] == pid and process["args"] == "sleep 3001", process

        # poll_interval is 3 s in this Hub: it must see that its server is gone.
        assert wait_until(lambda: hub.server_model(user) is None, timeout=60), hub.server_model(user)

        # The spawner's own poll and stop, from the state the Hub had, with the PID in use.
        spawner = spawner_for(user, state, term_timeout=1, kill_timeout=1)
        assert asyncio.run(spawner.poll()) == 0
        asyncio.run(spawner.stop())
        assert [p["pid"] for p in leftovers(node, user) if p["args"] == "sleep 3001"] == [pid], (
            "stop killed the process that now has the server's PID"
        )
    finally:
        cluster_mod.node_run(node, ["kill", "-KILL", str(pid)], check=False)
    assert wait_until(lambda: nothing_left(node, user)), leftovers(node, user)


DEAF_SERVER = f"""#!{SINGLEUSER_PYTHON}
# jupyterhub-singleuser that ignores SIGTERM, with a helper process in a session of its own.
import signal
import subprocess
import sys

from jupyter_server.serverapp import ServerApp
from jupyterhub.singleuser import main

ServerApp.init_signal = lambda self: signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen(["sleep", "3002"], start_new_session=True)
sys.exit(main())
"""


def test_a_server_deaf_to_sigterm_is_killed_with_its_kernel_and_children(alt_hub, user_script):
    user, node = "rss-bob", NODE2
    server = user_script(user, "deaf-singleuser", DEAF_SERVER)
    hub = alt_hub(
        f'c.Spawner.cmd = ["{server}"]\n'
        "c.RemoteSingularitySpawner.term_timeout = 3\n"
        "c.RemoteSingularitySpawner.kill_timeout = 3\n"
    )
    hub.spawn(user, options={"host": node})
    state = hub.wait_ready(user)["state"]
    # A real kernel, started as a notebook would start it (jupyter_client gives it its own session).
    r = requests.post(
        f"{hub.url}/user/{user}/api/kernels",
        headers={"Authorization": f"token {hub.service_token}"},
        json={"name": "python3"},
        timeout=60,
    )
    assert r.status_code == 201, r.text

    def kernel_and_helper():
        procs = leftovers(node, user)
        kernels = [p for p in procs if "ipykernel" in p["args"]]
        helpers = [p for p in procs if p["args"] == "sleep 3002"]
        return (kernels, helpers) if kernels and helpers else None

    found = wait_until(kernel_and_helper, timeout=60)
    assert found, leftovers(node, user)
    for p in found[0] + found[1]:
        assert p["pgid"] != state["pid"], "outside the server's process group: SIGTERM to it misses them"

    began = time.monotonic()
    hub.stop_server(user)
    took = time.monotonic() - began
    assert wait_until(lambda: nothing_left(node, user)), leftovers(node, user)
    assert re.search(r"Stopped .* \(KILL\)", hub.log_path.read_text()), "the server did ignore SIGTERM"
    print(f"a SIGTERM-deaf server stopped in {took:.1f}s (term_timeout 3, kill_timeout 3)")


# Start a helper in the server's process group and one in a session of its own,
# then crash after a while, before listening.
DIES_DURING_START = """#!/bin/bash
sleep 3003 &
setsid sleep 3004 &
sleep 2
echo "simulated crash while starting" >&2
exit 3
"""

# Never listens, ignores SIGTERM, and has a helper in a session of its own.
NEVER_LISTENS = """#!/bin/bash
trap '' TERM
setsid sleep 3005 &
while :; do sleep 1; done
"""

# Listens on its port but never answers HTTP, and ignores SIGTERM. It takes
# each request and hangs up without a reply: left in the backlog instead, the
# Hub's one request would hang for minutes before http_timeout is looked at.
# (http_timeout above the Hub's 10 s slow-spawn wait, so the reason comes
# through the progress stream as a user sees it, not as a bare 500.)
NEVER_ANSWERS = f"""#!{SINGLEUSER_PYTHON}
import os
import signal
import socket
from urllib.parse import urlparse

url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
listener = socket.create_server((url.hostname, url.port))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    conn, _ = listener.accept()
    conn.settimeout(1)
    try:
        conn.recv(65536)
    except OSError:
        pass
    conn.close()
"""


HALF_WAY = ("rss-carol", NODE1)


@pytest.fixture(autouse=True)
def _no_leftovers_for_the_next_test(request):
    """A failed half-way test must not leave its processes to fail the next ones."""
    yield
    if "script" in request.fixturenames:
        user, node = HALF_WAY
        for p in leftovers(node, user):
            cluster_mod.node_run(node, ["kill", "-KILL", str(p["pid"])], check=False)


@pytest.mark.parametrize(
    "script, config, says",
    [
        (DIES_DURING_START, "", "simulated crash while starting"),
        (NEVER_LISTENS, "c.Spawner.start_timeout = 20", "did not listen on port"),
        (NEVER_ANSWERS, "c.Spawner.http_timeout = 12", "didn't respond"),
    ],
    ids=["server-dies-after-a-while", "port-never-opens", "port-open-but-no-answer"],
)
def test_a_start_that_fails_half_way_leaves_nothing_on_the_node(alt_hub, user_script, script, config, says):
    user, node = HALF_WAY
    server = user_script(user, "server", script)
    hub = alt_hub(
        f'c.Spawner.cmd = ["{server}"]\n'
        "c.RemoteSingularitySpawner.term_timeout = 2\n"
        "c.RemoteSingularitySpawner.kill_timeout = 2\n"
        f"{config}\n"
    )
    message = spawn_failure(hub, user, {"host": node})
    assert says in message, message
    assert wait_until(lambda: hub.server_model(user) is None, timeout=60), hub.server_model(user)
    assert wait_until(lambda: nothing_left(node, user)), leftovers(node, user)


IDLE_CULLER = f"""
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [{sys.executable!r}, "-m", "jupyterhub_idle_culler", "--timeout=10", "--cull-every=5"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"""


def test_the_idle_culler_stops_an_idle_server_and_nothing_is_left(alt_hub):
    user, node = "rss-alice", NODE2
    hub = alt_hub(IDLE_CULLER)
    hub.spawn(user, options={"host": node})
    hub.wait_ready(user)
    assert leftovers(node, user), "the server runs on the node"
    assert wait_until(lambda: hub.server_model(user) is None, timeout=90), hub.server_model(user)
    assert re.search(r"Culling server rss-alice", hub.log_path.read_text()), "the culler stopped it"
    assert wait_until(lambda: nothing_left(node, user)), leftovers(node, user)
