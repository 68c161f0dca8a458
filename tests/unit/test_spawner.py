"""The spawner against fake nodes (fakes.py): state, form, start, poll, stop, errors."""

import asyncio
import logging
import socket
import threading

import paramiko
import pytest
from fakes import reply
from jupyterhub.utils import format_exception

from remotesingularityspawner import RemoteSingularitySpawner, remote, state
from remotesingularityspawner.failures import SpawnException
from remotesingularityspawner.placement import Placed
from remotesingularityspawner.server_process import ServerProcess

TWO_NODES = "n1:10.0.0.1,n2:10.0.0.2"


def arg(args, option):
    """The value that follows *option* in a script's argv."""
    return args[args.index(option) + 1]


def running(**values):
    """The state the Hub keeps of a server started on n1 (as a restarted Hub loads it)."""
    return {"pid": 42, "start_time": 7, "address": "10.0.0.1", "node": "n1", "login": "alice", **values}


async def wait_for(condition, seconds=5):
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


# --- state -------------------------------------------------------------------------------


def test_state_round_trip_keeps_what_poll_and_stop_need(make_spawner):
    s = make_spawner()
    s.placed = Placed(node="node1", address="10.0.0.1", login="alice")
    s.process = ServerProcess(4242, 987654, 50123, "/home/alice/x/server.log", "abcdef0123456789")
    saved = s.get_state()
    assert saved["version"] == state.STATE_VERSION

    restored = make_spawner()
    restored.load_state(saved)
    assert (restored.placed, restored.process) == (s.placed, s.process)
    assert restored.get_state() == saved, "every field kept"

    restored.clear_state()
    assert restored.process is None and restored.placed is None and restored.port == 0
    assert "pid" not in restored.get_state()


def test_empty_state_loads_as_not_started(make_spawner):
    s = make_spawner()
    s.load_state({})
    assert s.process is None


async def test_a_state_without_version_as_written_before_loads(make_spawner, fake_ssh):
    node = fake_ssh.node("10.0.0.1")
    node.on("check_pid.sh", reply(running=True))
    old = running()
    assert "version" not in old
    s = make_spawner()
    s.load_state(old)
    assert (s.process.pid, s.process.start_time) == (42, 7)
    assert (s.placed.node, s.placed.address, s.placed.login) == ("n1", "10.0.0.1", "alice")
    assert await s.poll() is None
    assert node.scripts_run() == ["check_pid.sh"]
    assert arg(node.runs[-1].args, "--pid") == "42"


async def test_a_state_of_a_newer_version_is_refused_and_said_so(make_spawner, fake_ssh, caplog):
    s = make_spawner()
    caplog.set_level(logging.ERROR)
    s.load_state(running(version=state.STATE_VERSION + 1))
    assert s.process is None, "the server is not recognised"
    assert await s.poll() == 0
    assert fake_ssh.connections == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"state version {state.STATE_VERSION + 1}" in m for m in errors), errors


async def test_poll_of_a_never_started_spawner_is_0(make_spawner):
    assert await make_spawner().poll() == 0


# --- the form and the options --------------------------------------------------------------


async def test_form_lists_valid_nodes_first_preselected_and_escaped(make_spawner, fake_ssh):
    s = make_spawner(
        nodelist="n1:10.0.0.1,bad<script>:10.0.0.2,:10.0.0.3",
        default_bind_path="/scratch;/x<y>",
    )
    # Both nodes answer the status check.
    for host in ("10.0.0.1", "10.0.0.3"):
        fake_ssh.node(host).on("node_status.sh", reply(servers=0))
    html = await s.get_options_form()
    assert html.count("<option") == 2
    assert 'value="n1" selected' in html
    assert "10.0.0.3" in html
    assert "<script>" not in html and "&lt;y&gt;" in html
    assert fake_ssh.node("10.0.0.1").scripts_run() == ["node_status.sh"]
    assert fake_ssh.node("10.0.0.3").scripts_run() == ["node_status.sh"]
    assert fake_ssh.node("10.0.0.2").runs == [], "the invalid record is not asked"


async def test_form_with_no_valid_node_says_so(make_spawner):
    s = make_spawner(nodelist="h:999.1.1.1")
    with pytest.raises(Exception, match="No compute node is available"):
        await s.get_options_form()


async def test_invalid_options_fail_before_any_connection(make_spawner, fake_ssh):
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    s.user_options = {"host": "n1", "binds": ["/ok", "/bad/$(id)"]}
    with pytest.raises(Exception) as e:
        await s.start()
    assert "/bad/$(id)" in str(e.value) and "not allowed" in str(e.value)
    assert fake_ssh.connections == [], "an SSH connection was attempted"
    assert fake_ssh.runs() == []


async def test_the_form_message_is_the_sentence_alone(make_spawner):
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    expected = "Cannot start your server: host 'n9' is not one of the configured nodes: n1"
    with pytest.raises(SpawnException) as e:
        await s.apply_user_options(s, {"host": "n9"})
    assert e.value.jupyterhub_message == expected
    # What the Hub shows on the form, the spawn page and in REST replies.
    assert format_exception(e.value)[0] == expected
    assert e.value.status_code == 400 and e.value.reason == "options"

    s.user_options = {"host": "n1", "binds": ["/bad/$(id)"]}
    with pytest.raises(SpawnException) as e:
        await s.start()
    shown = format_exception(e.value)[0]
    assert shown.startswith("Cannot start your server: bind '/bad/$(id)'") and "not allowed" in shown


def test_ssh_username_template_and_callable(make_spawner):
    s = make_spawner(ssh_username="hpc_{username}")
    assert s.parts.login.name() == "hpc_alice"
    s = make_spawner(ssh_username=lambda sp: sp.user.name.upper())
    assert s.parts.login.name() == "ALICE"


def test_traits_have_help_for_admins():
    for name, trait in RemoteSingularitySpawner.class_traits(config=True).items():
        if trait.this_class is RemoteSingularitySpawner:
            assert len(trait.help) > 30, name


# --- start -------------------------------------------------------------------------------


async def test_a_host_given_by_its_address_starts_on_the_named_node(make_spawner, fake_ssh):
    s = make_spawner(nodelist=TWO_NODES, singularity_container_path="/img.sif")
    n2 = fake_ssh.node("10.0.0.2")
    n2.on("start_singleuser.sh", reply(pid=9, start_time=5, port=50000))
    s.user_options = {"host": "10.0.0.2"}
    assert await s.start() == ("10.0.0.2", 50000)
    saved = s.get_state()
    assert saved["node"] == "n2" and saved["address"] == "10.0.0.2"
    assert n2.scripts_run() == ["start_singleuser.sh"]
    assert fake_ssh.node("10.0.0.1").runs == []


@pytest.mark.parametrize(
    "error, cause, logged",
    [
        pytest.param(
            paramiko.SSHException("Garbage packet received"),
            "lost the connection to 10.0.0.1",
            "lost the connection to 10.0.0.1: SSHException: Garbage packet received",
            id="ssh",
        ),
        pytest.param(
            RuntimeError("boom"),
            "an unexpected error happened on the way to the node; the administrators have been told",
            "RuntimeError: boom",
            id="any",
        ),
    ],
)
async def test_any_error_of_the_ssh_layer_during_start_is_a_spawn_failure_naming_node_and_cause(
    make_spawner, fake_ssh, error, cause, logged, caplog
):
    # The exception's text is for the Hub's log; the user reads a sentence.
    s = make_spawner(nodelist=TWO_NODES, singularity_container_path="/img.sif")

    def broken(args, stdin):
        raise error

    fake_ssh.node("10.0.0.1").on("start_singleuser.sh", broken)
    s.user_options = {"host": "n1"}
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert format_exception(e.value)[0] == f"Cannot start your server on n1: {cause}"
    assert e.value.status_code == 400
    assert s.process is None
    assert logged in caplog.text


async def test_a_refused_login_during_start_names_node_and_cause(make_spawner, fake_ssh):
    s = make_spawner(nodelist=TWO_NODES, singularity_container_path="/img.sif")
    fake_ssh.refuse["10.0.0.1"] = remote.IdentityError("login as alice@10.0.0.1:22 with id_ed25519 refused")
    s.user_options = {"host": "n1"}
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert format_exception(e.value)[0] == (
        "Cannot start your server on n1: login as alice@10.0.0.1:22 with id_ed25519 refused"
    )
    assert e.value.status_code == 400


async def test_a_start_the_hub_gave_up_on_is_stopped_when_it_completes(make_spawner, fake_ssh):
    """start_timeout cancels start(); the server that comes up afterwards must not be left running."""
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    node = fake_ssh.node("10.0.0.1")
    release = threading.Event()

    def start(args, stdin):
        release.wait(10)
        return reply(pid=99, start_time=5, port=50000)

    node.on("start_singleuser.sh", start)
    node.on("stop.sh", reply(stopped=True, signal="TERM"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(s.start(), timeout=0.2)
    assert node.scripts_run() == ["start_singleuser.sh"]
    release.set()
    await wait_for(lambda: len(node.scripts_run()) == 2)
    assert node.scripts_run() == ["start_singleuser.sh", "stop.sh"]
    args = node.runs[-1].args
    assert arg(args, "--pid") == "99" and arg(args, "--start-time") == "5"


async def test_stopping_a_server_that_is_still_starting_stops_it_once_started(make_spawner, fake_ssh):
    """The Hub shuts down (cleanup_servers) while start_singleuser.sh still runs on the node."""
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    node = fake_ssh.node("10.0.0.1")
    started = threading.Event()
    release = threading.Event()

    def start(args, stdin):
        started.set()
        release.wait(10)
        return reply(pid=77, start_time=3, port=50001)

    node.on("start_singleuser.sh", start)
    node.on("stop.sh", reply(stopped=True, signal="TERM"))
    starting = asyncio.ensure_future(s.start())
    await wait_for(started.is_set)
    assert await s.poll() is None, "a starting server counts as running"
    stop = asyncio.ensure_future(s.stop())
    await asyncio.sleep(0.1)
    assert not stop.done(), "stop() waits for the start in flight"
    release.set()
    await asyncio.wait_for(stop, 10)
    with pytest.raises(Exception, match="stopped while it started"):
        await starting
    assert node.scripts_run() == ["start_singleuser.sh", "stop.sh"]
    args = node.runs[-1].args
    assert arg(args, "--pid") == "77" and arg(args, "--start-time") == "3"
    assert s.process is None


async def test_no_valid_node_fails_the_spawn_clearly_before_any_connection(make_spawner, fake_ssh):
    s = make_spawner(nodelist="bad record,h:300.1.1.1", singularity_container_path="/img.sif")
    with pytest.raises(Exception, match="No compute node is available.*nodelist"):
        await s.start()
    assert fake_ssh.connections == [], "connected"


async def test_names_are_resolved_off_the_event_loop(make_spawner, monkeypatch):
    seen = []

    def fake_getaddrinfo(name, *args, **kwargs):
        seen.append((name, threading.current_thread() is threading.main_thread()))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.9.9", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    s = make_spawner(nodelist="compute-7:")
    nodes = await s.parts.placer.nodes()
    assert [(n.label, n.address) for n in nodes] == [("compute-7", "10.9.9.9")]
    assert seen == [("compute-7", False)], "resolved in a worker thread, not on the loop"
    await s.parts.placer.nodes()
    assert len(seen) == 1, "resolved once, then cached"


# --- stop ----------------------------------------------------------------------------------


async def test_stop_now_kills_without_waiting_term_timeout(make_spawner, fake_ssh):
    node = fake_ssh.node("10.0.0.1")
    node.on("stop.sh", reply(stopped=True, signal="KILL"))
    s = make_spawner(term_timeout=7, kill_timeout=3, ssh_command_timeout=20)

    s.load_state(running())
    await s.stop(now=True)
    assert s.process is None
    (run,) = [r for r in node.runs if r.script == "stop.sh"]
    assert arg(run.args, "--pid") == "42" and arg(run.args, "--start-time") == "7"
    assert arg(run.args, "--term-timeout") == "0" and arg(run.args, "--kill-timeout") == "3"
    assert run.timeout == 0 + 3 + 20

    s.load_state(running())
    await s.stop()
    assert s.process is None
    run = node.runs[-1]
    assert run.script == "stop.sh"
    assert arg(run.args, "--term-timeout") == "7" and arg(run.args, "--kill-timeout") == "3"
    assert run.timeout == 7 + 3 + 20


# --- poll: a node that cannot be reached ----------------------------------------------------


async def test_unreachable_node_is_reported_running_for_the_grace_period_then_stopped(
    make_spawner, fake_ssh, clock
):
    s = make_spawner(poll_grace_period=120)
    s.load_state(running())
    node = fake_ssh.node("10.0.0.1")

    def silent(args, stdin):
        raise TimeoutError("timed out")  # the node went silent under the command

    node.on("check_pid.sh", silent)
    assert await s.poll() is None
    clock.now += 119
    assert await s.poll() is None, "still within the grace period"
    clock.now += 2
    assert await s.poll() == 1, "after the grace period the server counts as gone"
    assert node.scripts_run() == ["check_pid.sh"] * 3


async def test_a_successful_poll_resets_the_grace_period(make_spawner, fake_ssh, clock):
    s = make_spawner(poll_grace_period=60)
    s.load_state(running())
    fake_ssh.node("10.0.0.1").on("check_pid.sh", reply(running=True))
    refused = remote.ConnectError("cannot connect to alice@10.0.0.1:22: refused")

    fake_ssh.refuse["10.0.0.1"] = refused
    assert await s.poll() is None
    clock.now += 50
    del fake_ssh.refuse["10.0.0.1"]
    assert await s.poll() is None
    assert fake_ssh.node("10.0.0.1").scripts_run() == ["check_pid.sh"]
    fake_ssh.refuse["10.0.0.1"] = refused
    # The kept connection broke with the node.
    for conn in fake_ssh.connections:
        conn.alive = False
    clock.now += 50
    assert await s.poll() is None, "the outage started again from zero"
    clock.now += 61
    assert await s.poll() == 1


def ssh_refused_spawner(make_spawner, fake_ssh, port):
    s = make_spawner(poll_grace_period=60)
    s.load_state(running(address="127.0.0.1", port=port))
    fake_ssh.refuse["127.0.0.1"] = remote.ConnectError("cannot connect to alice@127.0.0.1:22: refused")
    return s


async def test_sshd_down_but_the_server_listening_is_running_and_uses_no_grace(make_spawner, fake_ssh, clock):
    with socket.create_server(("127.0.0.1", 0)) as server:
        s = ssh_refused_spawner(make_spawner, fake_ssh, server.getsockname()[1])
        for _ in range(3):
            assert await s.poll() is None
            clock.now += 100  # far beyond poll_grace_period, in total
    assert s.parts.poll_grace.since is None


async def test_node_answers_but_nothing_listens_on_the_port_is_gone_at_once(make_spawner, fake_ssh, clock):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    s = ssh_refused_spawner(make_spawner, fake_ssh, port)
    assert await s.poll() == 1


async def test_a_port_that_does_not_answer_leaves_it_to_the_grace_period(make_spawner, fake_ssh, clock):
    # The TCP probe of the server's port is the one network access outside the fake SSH.
    probes = []
    s = make_spawner(poll_grace_period=60, ssh_connect_timeout=4)
    s.probe_port = lambda *a: probes.append(a)
    s.load_state(running(port=50123))
    fake_ssh.refuse["10.0.0.1"] = remote.ConnectError("cannot connect to alice@10.0.0.1:22: timed out")
    assert await s.poll() is None
    clock.now += 61
    assert await s.poll() == 1
    assert probes == [("10.0.0.1", 50123, 4)] * 2


# --- packaging ------------------------------------------------------------------------------


def test_jupyterhub_help_all_shows_the_traits():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "--help-all"], capture_output=True, text=True, check=True
    ).stdout
    for trait in ("nodelist", "singularity_container_path", "known_hosts_files", "poll_grace_period"):
        assert f"--RemoteSingularitySpawner.{trait}" in out


def test_the_wheel_ships_scripts_template_and_entry_point(tmp_path):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("remote_singularity_spawner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for script in ("common.sh", "start_singleuser.sh", "check_pid.sh", "stop.sh", "node_status.sh"):
        assert f"remotesingularityspawner/scripts/{script}" in names
    assert "remotesingularityspawner/templates/options_form.html" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[jupyterhub.spawners]" in text
    assert "remote-singularity-spawner = remotesingularityspawner:RemoteSingularitySpawner" in text
