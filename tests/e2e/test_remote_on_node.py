"""remote.py against a real sshd node: uploads, races and the stdin protocol."""

from __future__ import annotations

import shutil
import threading

import pytest

from remotesingularityspawner import remote

NODE = "rss-node1"


@pytest.fixture
def fresh_bundle(tmp_path):
    """A version of the scripts no node has seen yet."""
    copy = tmp_path / "scripts"
    shutil.copytree(remote.packaged_scripts_dir(), copy)
    with open(copy / "check_pid.sh", "a") as f:
        f.write(f"# {tmp_path.name}\n")
    return remote.ScriptBundle.load(copy)


def target_for(cluster, user):
    u = cluster.user(user)
    return remote.Target(
        host=cluster.node(NODE).ip,
        username=user,
        key_files=(str(u.private_key),),
        known_hosts_files=(str(u.home / ".ssh" / "known_hosts"),),
    )


def test_concurrent_first_uploads_leave_one_complete_copy(cluster, fresh_bundle):
    user = "rss-carol"
    target = target_for(cluster, user)
    base = ".rss-race-test"
    results, errors = [], []

    def check():
        try:
            with remote.NodeSession(target, fresh_bundle, base) as session:
                results.append(session.run("check_pid.sh", ["--pid", "1", "--start-time", "0"]))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [r.exit_code for r in results] == [remote.ExitCode.NOT_RUNNING] * 4
    scripts = cluster.user(user).home / base / "scripts"
    assert sorted(p.name for p in scripts.iterdir()) == [fresh_bundle.version], "no staging left behind"
    for name, data in fresh_bundle.files.items():
        assert (scripts / fresh_bundle.version / name).read_bytes() == data
    shutil.rmtree(cluster.user(user).home / base)


def test_a_removed_copy_is_uploaded_again(cluster, fresh_bundle):
    user = "rss-bob"
    target = target_for(cluster, user)
    base = ".rss-removed-test"
    copy = cluster.user(user).home / base / "scripts" / fresh_bundle.version
    with remote.NodeSession(target, fresh_bundle, base) as session:
        assert session.run("check_pid.sh", ["--pid", "1", "--start-time", "0"]).exit_code == 3
        shutil.rmtree(copy)
        reply = session.run("check_pid.sh", ["--pid", "1", "--start-time", "0"])
    assert reply.exit_code == remote.ExitCode.NOT_RUNNING and reply.data == {"running": False}
    assert (copy / "check_pid.sh").exists()
    shutil.rmtree(cluster.user(user).home / base)


def test_stdin_crosses_the_channel_byte_for_byte(cluster, tmp_path):
    """The environment payload arrives whole (no truncation, no echo, NULs and UTF-8 intact)."""
    user = "rss-alice"
    copy = tmp_path / "dump-scripts"
    shutil.copytree(remote.packaged_scripts_dir(), copy)
    # A check_pid.sh that stores its stdin: the transport is what is under test.
    (copy / "check_pid.sh").write_text('#!/usr/bin/env bash\ncat > "$1"\nprintf \'{"got": true}\\n\'\n')
    bundle = remote.ScriptBundle.load(copy)
    env = {f"VAR_{i}": f"value {i} $HOME `id` \"q\" \\ 'x' ü\n" * 20 for i in range(150)}
    payload = remote.env_payload(env)
    dump = ".rss-stdin-test/received"
    with remote.NodeSession(target_for(cluster, user), bundle, ".rss-stdin-test") as session:
        reply = session.run("check_pid.sh", [dump], payload)
    assert reply.exit_code == 0 and reply.data == {"got": True}
    assert reply.stderr == ""
    received = (cluster.user(user).home / dump).read_bytes()
    assert len(payload) > 2 * 32768, "spans several SSH packets"
    assert received == payload.encode()
    shutil.rmtree(cluster.user(user).home / ".rss-stdin-test")
