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


async def test_form_lists_valid_nodes_first_preselected_and_escaped():
    spawner_module._node_cache.clear()
    s = make_spawner(
        nodelist='n1:10.0.0.1,bad<script>:10.0.0.2,:10.0.0.3',
        default_bind_path="/scratch;/x<y>",
    )
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
