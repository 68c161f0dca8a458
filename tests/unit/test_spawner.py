"""The spawner object without a cluster: state, form, server names."""

from types import SimpleNamespace

import pytest

from remotesingularityspawner import RemoteSingularitySpawner
from remotesingularityspawner import spawner as spawner_module


def make_spawner(**traits):
    user = SimpleNamespace(name="alice", url="/user/alice/", id=1)
    return RemoteSingularitySpawner(user=user, **traits)


def test_state_round_trip_keeps_what_poll_and_stop_need():
    s = make_spawner()
    s.node, s.address, s.port, s.pid, s.start_time = "node1", "10.0.0.1", 50123, 4242, 987654
    s.scripts_version, s.log_path, s.login = "abcdef0123456789", "/home/alice/x/server.log", "alice"
    state = s.get_state()
    assert state["version"] == spawner_module.STATE_VERSION

    restored = make_spawner()
    restored.load_state(state)
    for name in RemoteSingularitySpawner._state_fields:
        assert getattr(restored, name) == getattr(s, name), name

    restored.clear_state()
    assert restored.pid == 0 and restored.node == "" and restored.port == 0
    assert "pid" not in restored.get_state()


def test_empty_state_loads_as_not_started():
    s = make_spawner()
    s.load_state({})
    assert s.pid == 0


async def test_poll_of_a_never_started_spawner_is_0():
    assert await make_spawner().poll() == 0


async def test_form_lists_valid_nodes_first_preselected_and_escaped(monkeypatch):
    spawner_module._node_cache.clear()
    spawner_module._status_cache.clear()
    s = make_spawner(
        nodelist="n1:10.0.0.1,bad<script>:10.0.0.2,:10.0.0.3",
        default_bind_path="/scratch;/x<y>",
    )
    # Both nodes answer the status check.
    monkeypatch.setattr(s, "_run_script", lambda *a: spawner_module.remote.Reply(0, {"servers": 0}))
    html = await s.get_options_form()
    assert html.count("<option") == 2
    assert 'value="n1" selected' in html
    assert "10.0.0.3" in html
    assert "<script>" not in html and "&lt;y&gt;" in html


async def test_form_with_no_valid_node_says_so():
    spawner_module._node_cache.clear()
    s = make_spawner(nodelist="h:999.1.1.1")
    with pytest.raises(Exception, match="No compute node is available"):
        await s.get_options_form()


async def test_invalid_options_fail_before_any_connection(monkeypatch):
    spawner_module._node_cache.clear()

    def no_ssh(*args, **kwargs):
        raise AssertionError("an SSH connection was attempted")

    monkeypatch.setattr(spawner_module.remote, "connect", no_ssh)
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    s.user_options = {"host": "n1", "binds": ["/ok", "/bad/$(id)"]}
    with pytest.raises(Exception) as e:
        await s.start()
    assert "/bad/$(id)" in str(e.value) and "not allowed" in str(e.value)


def test_server_dirs_are_safe_and_distinct():
    key = spawner_module._server_key
    names = ["", "a", "A", "x/../../y", "..", "ünï", "a" * 200]
    keys = {key("alice", n) for n in names}
    assert len(keys) == len(names)
    for k in keys:
        assert "/" not in k and not k.startswith(".") and len(k) < 60
    assert key("alice", "a") != key("bob", "a")
    assert key("alice", "gpu") == key("alice", "gpu")


def test_ssh_username_template_and_callable():
    s = make_spawner(ssh_username="hpc_{username}")
    assert s._login_name() == "hpc_alice"
    s = make_spawner(ssh_username=lambda sp: sp.user.name.upper())
    assert s._login_name() == "ALICE"


def test_traits_have_help_for_admins():
    for name, trait in RemoteSingularitySpawner.class_traits(config=True).items():
        if trait.this_class is RemoteSingularitySpawner:
            assert len(trait.help) > 30, name


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_unreachable_node_is_reported_running_for_the_grace_period_then_stopped(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(spawner_module.time, "monotonic", clock)
    s = make_spawner(poll_grace_period=120)
    s.pid, s.start_time, s.address, s.node, s.login = 42, 7, "10.0.0.1", "n1", "alice"

    calls = []

    def unreachable(*args):
        calls.append(args[1])
        raise spawner_module.remote.ConnectError("cannot connect to alice@10.0.0.1:22: timed out")

    monkeypatch.setattr(s, "_run_script", unreachable)
    assert await s.poll() is None
    clock.now += 119
    assert await s.poll() is None, "still within the grace period"
    clock.now += 2
    assert await s.poll() == 1, "after the grace period the server counts as gone"
    assert calls == ["check_pid.sh"] * 3


async def test_a_successful_poll_resets_the_grace_period(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(spawner_module.time, "monotonic", clock)
    s = make_spawner(poll_grace_period=60)
    s.pid, s.start_time, s.address, s.node, s.login = 42, 7, "10.0.0.1", "n1", "alice"
    reachable = {"ok": False}

    def run(*args):
        if not reachable["ok"]:
            raise spawner_module.remote.ConnectError("refused")
        return spawner_module.remote.Reply(exit_code=0, data={"running": True})

    monkeypatch.setattr(s, "_run_script", run)
    assert await s.poll() is None
    clock.now += 50
    reachable["ok"] = True
    assert await s.poll() is None
    reachable["ok"] = False
    clock.now += 50
    assert await s.poll() is None, "the outage started again from zero"
    clock.now += 61
    assert await s.poll() == 1


def _ssh_refused_spawner(monkeypatch, clock, port):
    monkeypatch.setattr(spawner_module.time, "monotonic", clock)
    s = make_spawner(poll_grace_period=60)
    s.pid, s.start_time, s.address, s.node, s.login, s.port = 42, 7, "127.0.0.1", "n1", "alice", port

    def refused(*args):
        raise spawner_module.remote.ConnectError("cannot connect to alice@127.0.0.1:22: refused")

    monkeypatch.setattr(s, "_run_script", refused)
    return s


async def test_sshd_down_but_the_server_listening_is_running_and_uses_no_grace(monkeypatch):
    import socket

    clock = FakeClock()
    with socket.create_server(("127.0.0.1", 0)) as server:
        s = _ssh_refused_spawner(monkeypatch, clock, server.getsockname()[1])
        for _ in range(3):
            assert await s.poll() is None
            clock.now += 100  # far beyond poll_grace_period, in total
    assert s._unreachable_since is None


async def test_node_answers_but_nothing_listens_on_the_port_is_gone_at_once(monkeypatch):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    s = _ssh_refused_spawner(monkeypatch, FakeClock(), port)
    assert await s.poll() == 1


async def test_a_port_that_does_not_answer_leaves_it_to_the_grace_period(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(spawner_module.time, "monotonic", clock)
    probes = []
    monkeypatch.setattr(spawner_module.remote, "probe_port", lambda *a: probes.append(a))
    s = make_spawner(poll_grace_period=60, ssh_connect_timeout=4)
    s.pid, s.start_time, s.address, s.node, s.login, s.port = 42, 7, "10.0.0.1", "n1", "alice", 50123

    def timed_out(*args):
        raise spawner_module.remote.ConnectError("cannot connect to alice@10.0.0.1:22: timed out")

    monkeypatch.setattr(s, "_run_script", timed_out)
    assert await s.poll() is None
    clock.now += 61
    assert await s.poll() == 1
    assert probes == [("10.0.0.1", 50123, 4)] * 2


def test_jupyterhub_help_all_shows_the_traits():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "--help-all"], capture_output=True, text=True, check=True
    ).stdout
    for trait in ("nodelist", "singularity_container_path", "known_hosts_files", "poll_grace_period"):
        assert f"--RemoteSingularitySpawner.{trait}" in out


async def test_a_start_the_hub_gave_up_on_is_stopped_when_it_completes(monkeypatch):
    """start_timeout cancels start(); the server that comes up afterwards must not be left running."""
    import asyncio
    import threading

    spawner_module._node_cache.clear()
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    monkeypatch.setattr(s, "get_env", lambda: {"JUPYTERHUB_SERVICE_URL": "http://10.0.0.1:0/user/alice/"})
    release = threading.Event()
    calls = []

    def run(target, script, args, stdin="", on_progress=None):
        calls.append((script, list(args)))
        if script == "start_singleuser.sh":
            release.wait(10)
            return spawner_module.remote.Reply(0, {"pid": 99, "start_time": 5, "port": 50000})
        return spawner_module.remote.Reply(0, {"stopped": True, "signal": "TERM"})

    monkeypatch.setattr(s, "_run_script", run)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(s.start(), timeout=0.2)
    assert [c[0] for c in calls] == ["start_singleuser.sh"]
    release.set()
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.05)
    script, args = calls[1]
    assert script == "stop.sh"
    assert args[args.index("--pid") + 1] == "99" and args[args.index("--start-time") + 1] == "5"


async def test_stopping_a_server_that_is_still_starting_stops_it_once_started(monkeypatch):
    """The Hub shuts down (cleanup_servers) while start_singleuser.sh still runs on the node."""
    import asyncio
    import threading

    spawner_module._node_cache.clear()
    s = make_spawner(nodelist="n1:10.0.0.1", singularity_container_path="/img.sif")
    monkeypatch.setattr(s, "get_env", lambda: {"JUPYTERHUB_SERVICE_URL": "http://10.0.0.1:0/user/alice/"})
    started = threading.Event()
    release = threading.Event()
    calls = []

    def run(target, script, args, stdin="", on_progress=None):
        calls.append((script, list(args)))
        if script == "start_singleuser.sh":
            started.set()
            release.wait(10)
            return spawner_module.remote.Reply(0, {"pid": 77, "start_time": 3, "port": 50001})
        return spawner_module.remote.Reply(0, {"stopped": True, "signal": "TERM"})

    monkeypatch.setattr(s, "_run_script", run)
    start = asyncio.ensure_future(s.start())
    while not started.is_set():
        await asyncio.sleep(0.01)
    assert await s.poll() is None, "a starting server counts as running"
    stop = asyncio.ensure_future(s.stop())
    await asyncio.sleep(0.1)
    assert not stop.done(), "stop() waits for the start in flight"
    release.set()
    await asyncio.wait_for(stop, 10)
    with pytest.raises(Exception, match="stopped while it started"):
        await start
    assert [c[0] for c in calls] == ["start_singleuser.sh", "stop.sh"]
    args = calls[1][1]
    assert args[args.index("--pid") + 1] == "77" and args[args.index("--start-time") + 1] == "3"
    assert s.pid == 0


async def test_no_valid_node_fails_the_spawn_clearly_before_any_connection(monkeypatch):
    spawner_module._node_cache.clear()
    monkeypatch.setattr(spawner_module.remote, "connect", lambda *a: pytest.fail("connected"))
    s = make_spawner(nodelist="bad record,h:300.1.1.1", singularity_container_path="/img.sif")
    with pytest.raises(Exception, match="No compute node is available.*nodelist"):
        await s.start()


async def test_names_are_resolved_off_the_event_loop(monkeypatch):
    import socket
    import threading

    spawner_module._node_cache.clear()
    seen = []

    def fake_getaddrinfo(name, *args, **kwargs):
        seen.append((name, threading.current_thread() is threading.main_thread()))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.9.9", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    s = make_spawner(nodelist="compute-7:")
    nodes = await s.get_nodes()
    assert [(n.label, n.address) for n in nodes] == [("compute-7", "10.9.9.9")]
    assert seen == [("compute-7", False)], "resolved in a worker thread, not on the loop"
    await s.get_nodes()
    assert len(seen) == 1, "resolved once, then cached"


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
