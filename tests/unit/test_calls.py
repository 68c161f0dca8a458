"""The pure builders of the script calls: argv, stdin and timeouts as data, no SSH."""

import pytest

from remotesingularityspawner import calls
from remotesingularityspawner.request import Bind

TOKEN = "s3cr3t-t0ken-value"


def a_start_call(**overrides):
    values = dict(
        exe="apptainer",
        image="/images/jupyter.sif",
        server_dir=".rss/servers/default-0123456789",
        port_range=(50000, 50100),
        timeout=110,
        singularity_args=["--pid", "--nv"],
        binds=[Bind("/scratch", "/scratch", "rw"), Bind("/software", "/opt/software", "ro")],
        command=["jupyterhub-singleuser", "--debug"],
        env={"JUPYTERHUB_API_TOKEN": TOKEN, "JUPYTERHUB_SERVICE_URL": "http://10.0.0.1:0/user/alice/"},
    )
    values.update(overrides)
    return calls.start_call(**values)


def option_values(args, option):
    return [args[i + 1] for i, a in enumerate(args) if a == option]


def test_start_call_puts_runtime_image_binds_and_command_in_argv():
    call = a_start_call()
    args = list(call.args)
    assert call.script == "start_singleuser.sh"
    assert call.timeout is None, "bounded by the Hub's start_timeout"
    options, command = args[: args.index("--")], args[args.index("--") + 1 :]
    assert option_values(options, "--exe") == ["apptainer"]
    assert option_values(options, "--image") == ["/images/jupyter.sif"]
    assert option_values(options, "--server-dir") == [".rss/servers/default-0123456789"]
    assert option_values(options, "--port-range") == ["50000-50100"]
    assert option_values(options, "--timeout") == ["110"]
    assert option_values(options, "--singularity-arg") == ["--pid", "--nv"]
    assert option_values(options, "--bind") == ["/scratch:/scratch:rw", "/software:/opt/software:ro"]
    assert command == ["jupyterhub-singleuser", "--debug"]


def test_start_call_puts_the_environment_only_on_stdin():
    call = a_start_call()
    assert not any(TOKEN in a or "JUPYTERHUB_API_TOKEN" in a for a in call.args), "no secret in argv"
    records = call.stdin.split("\0")
    assert records[-1] == ""
    assert records[:-1] == [
        f"JUPYTERHUB_API_TOKEN={TOKEN}",
        "JUPYTERHUB_SERVICE_URL=http://10.0.0.1:0/user/alice/",
    ]


def test_start_call_refuses_an_environment_that_cannot_travel():
    with pytest.raises(ValueError, match="BAD-KEY"):
        a_start_call(env={"BAD-KEY": "x"})
    with pytest.raises(ValueError, match="NUL"):
        a_start_call(env={"NUL": "a\0b"})


def test_check_call_args():
    call = calls.check_call(4242, 987654, 30.0)
    assert call.script == "check_pid.sh"
    assert call.args == ("--pid", "4242", "--start-time", "987654")
    assert call.stdin == "" and call.timeout == 30.0


def test_stop_call_waits_term_plus_kill_plus_the_answer():
    call = calls.stop_call(4242, 987654, ".rss/servers/x-1", 10.0, 5.0, 30.0)
    assert call.script == "stop.sh"
    assert call.args == (
        "--pid", "4242", "--start-time", "987654", "--server-dir", ".rss/servers/x-1",
        "--term-timeout", "10", "--kill-timeout", "5",
    )  # fmt: skip
    assert call.stdin == ""
    assert call.timeout == 10 + 5 + 30


def test_stop_call_now_kills_without_waiting_after_term():
    call = calls.stop_call(4242, 987654, ".rss/servers/x-1", 10.0, 5.0, 30.0, now=True)
    args = list(call.args)
    assert option_values(args, "--term-timeout") == ["0"]
    assert option_values(args, "--kill-timeout") == ["5"]
    assert call.timeout == 0 + 5 + 30


def test_status_call():
    call = calls.status_call(5.0)
    assert (call.script, call.args, call.stdin, call.timeout) == ("node_status.sh", (), "", 5.0)


def test_server_dirs_are_safe_and_distinct():
    def key(username, name):
        path = calls.server_dir(".remote-singularity-spawner", username, name)
        prefix = ".remote-singularity-spawner/servers/"
        assert path.startswith(prefix)
        return path[len(prefix) :]

    names = ["", "a", "A", "x/../../y", "..", "ünï", "a" * 200]
    keys = {key("alice", n) for n in names}
    assert len(keys) == len(names)
    for k in keys:
        assert "/" not in k and not k.startswith(".") and len(k) < 60
    assert key("alice", "a") != key("bob", "a")
    assert key("alice", "gpu") == key("alice", "gpu")
