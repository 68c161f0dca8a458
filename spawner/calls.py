"""Pure builders: what each node script is run with, from plain values.

Each returns a :class:`remote.ScriptCall` (script, argv, stdin, timeout),
tested as data without SSH; the spawner only gathers the values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

from .options import Bind
from .remote import ScriptCall, env_payload
from .remote.protocol import check_words


def server_dir(remote_state_dir: str, username: str, server_name: str) -> str:
    """The server's directory on the node: file-name-safe and distinct per server."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", server_name or "default")[:40].lstrip(".") or "_"
    digest = hashlib.sha256(f"{username}\0{server_name}".encode()).hexdigest()[:10]
    return f"{remote_state_dir}/servers/{slug}-{digest}"


def start_call(
    *,
    exe: str,
    image: str,
    server_dir: str,
    port_range: tuple[int, int],
    timeout: int,
    singularity_args: Sequence[str],
    binds: Sequence[Bind],
    command: Sequence[str],
    env: Mapping[str, str],
) -> ScriptCall:
    """start_singleuser.sh: the runtime, image and binds as argv; the environment on stdin.

    ValueError if a value cannot travel (see check_words and env_payload). *timeout*
    is the script's own wait for the server to listen; the call itself is
    bounded by the Hub's start_timeout.
    """
    args = [
        "--exe", exe,
        "--image", image,
        "--server-dir", server_dir,
        "--port-range", "{}-{}".format(*port_range),
        "--timeout", str(timeout),
    ]  # fmt: skip
    for extra in singularity_args:
        args += ["--singularity-arg", extra]
    for bind in binds:
        args += ["--bind", bind.spec]
    args = (*args, "--", *command)
    check_words(args)
    return ScriptCall("start_singleuser.sh", args, env_payload(env))


def check_call(pid: int, start_time: int, timeout: float) -> ScriptCall:
    """check_pid.sh: is the server with this PID and start time still running?"""
    return ScriptCall("check_pid.sh", ("--pid", str(pid), "--start-time", str(start_time)), timeout=timeout)


def stop_call(
    pid: int,
    start_time: int,
    server_dir: str,
    term_timeout: float,
    kill_timeout: float,
    answer_timeout: float,
    now: bool = False,
) -> ScriptCall:
    """stop.sh: the stop ladder; *now* sends SIGKILL without waiting after SIGTERM."""
    term = 0 if now else int(term_timeout)
    args = (
        "--pid", str(pid),
        "--start-time", str(start_time),
        "--server-dir", server_dir,
        "--term-timeout", str(term),
        "--kill-timeout", str(int(kill_timeout)),
    )  # fmt: skip
    return ScriptCall("stop.sh", args, timeout=term + kill_timeout + answer_timeout)


def status_call(timeout: float) -> ScriptCall:
    """node_status.sh: the node's load, memory and servers, for the form."""
    return ScriptCall("node_status.sh", (), timeout=timeout)
