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


def _bundle_with_check_pid(tmp_path, body: str) -> remote.ScriptBundle:
    """The packaged scripts with check_pid.sh replaced by *body* (the channel is under test)."""
    copy = tmp_path / "scripts"
    shutil.copytree(remote.packaged_scripts_dir(), copy)
    (copy / "check_pid.sh").write_text("#!/usr/bin/env bash\n" + body)
    return remote.ScriptBundle.load(copy)


def test_both_streams_arrive_whole_and_progress_as_it_comes(cluster, tmp_path):
    """Much output on stdout and stderr at once is read whole; @progress lines reach the
    callback while the command runs (it waits for a file the callback makes)."""
    # 2.4 MB on each stream, interleaved: more than a channel's window (2 MiB) if only one is read.
    body = r"""for i in $(seq 1 12000); do
  printf 'out %05d %0200d\n' "$i" 0
  printf 'err %05d %0200d\n' "$i" 0 >&2
  (( i % 3000 )) || printf '@progress %d step %d\n' "$((i / 300))" "$i" >&2
done
printf '@progress 50 waiting for %s\n' "$1" >&2
for _ in $(seq 1 300); do [[ -e "$1" ]] && break; sleep 0.1; done
[[ -e "$1" ]] || exit 9
printf '{"done": true}\n'
"""
    home = cluster.user("rss-alice").home
    go = home / ".rss-streams-test" / "go"
    events = []

    def on_progress(pct, msg):
        events.append((pct, msg))
        if msg.startswith("waiting"):
            go.touch()

    with remote.NodeSession(target_for(cluster, "rss-alice"), _bundle_with_check_pid(tmp_path, body),
                            ".rss-streams-test") as session:  # fmt: skip
        reply = session.run("check_pid.sh", [str(go)], on_progress=on_progress)
    assert reply.exit_code == 0 and reply.data == {"done": True}
    err_lines = reply.stderr.splitlines()
    assert len(err_lines) == 12000
    assert err_lines[0].startswith("err 00001 ") and err_lines[-1].startswith("err 12000 ")
    assert events == [(10, "step 3000"), (20, "step 6000"), (30, "step 9000"), (40, "step 12000"),
                      (50, f"waiting for {go}")]  # fmt: skip
    shutil.rmtree(home / ".rss-streams-test")


def test_a_command_past_its_timeout_fails_saying_so_and_the_next_one_runs(cluster, tmp_path):
    bundle = _bundle_with_check_pid(tmp_path, 'sleep "${1:-0}"\nprintf \'{"slept": true}\\n\'\n')
    target = target_for(cluster, "rss-bob")
    with remote.NodeSession(target, bundle, ".rss-timeout-test") as session:
        with pytest.raises(remote.ConnectError, match=f"{target.host} did not answer within 1s"):
            session.run("check_pid.sh", ["30"], timeout=1)
    with remote.NodeSession(target, bundle, ".rss-timeout-test") as session:
        assert session.run("check_pid.sh", ["0"], timeout=30).data == {"slept": True}
    shutil.rmtree(cluster.user("rss-bob").home / ".rss-timeout-test")
