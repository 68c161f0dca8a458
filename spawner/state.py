"""What the Hub keeps of a running server, so that a restarted Hub can poll and stop it.

The one place the state's fields are documented. Each part keeps its own value
(the placement's :class:`Placed`, the :class:`ServerProcess`, the TLS files'
directory); they are saved and loaded together here. A state carries
``version``; :func:`restore` reads it: a state written before versions were
read (no ``version``) is taken as version 1, and a version newer than this
spawner knows is refused (the server is then not recognised as running).
"""

from __future__ import annotations

from dataclasses import dataclass

from .placement import Placed
from .server_process import ServerProcess

STATE_VERSION = 2

# name -> what it holds (all strings or integers, JSON as the Hub stores them).
FIELDS = {
    "node": "the node's name as the user chose it (or its address when the node list gives none)",
    "address": "the node's IP address: where the Hub connects by SSH and proxies to",
    "port": "the port the server listens on, chosen on the node",
    "pid": "the server's PID on the node: the leader of its session and process group",
    "start_time": "the PID's start time (clock ticks since boot): a reused PID is not the server",
    "scripts_version": "the version of the scripts that started it (they also stop it)",
    "log_path": "the server's log on the node",
    "login": "the login name on the node",
    "certs_dir": "internal_ssl: the directory on the node with the server's key, certificate and CA",
    "job_id": "placement slurm: the Slurm job the server runs in (cancelled when it stops); '' otherwise",
    "partition": "placement slurm: the job's partition",
    "image": "the name of the image the server runs (images); '' in a state saved before images",
}
# Version history: 1 had no job_id and partition (no Slurm placement); 2 added them.
# image came later without a new version: it is optional, and older readers ignore it.


class StateError(ValueError):
    """A saved state this spawner cannot read; the message says why."""


@dataclass(frozen=True)
class Kept:
    """Everything kept of a running server: where it was placed, its process, its TLS files."""

    placed: Placed
    process: ServerProcess
    certs_dir: str = ""


def dump(kept: Kept) -> dict:
    """The state to save for a running server."""
    values = {
        **kept.placed.to_state(),
        **{name: getattr(kept.process, name) for name in ServerProcess.FIELDS},
    }
    values["certs_dir"] = kept.certs_dir
    return {"version": STATE_VERSION, **{name: values[name] for name in FIELDS}}


def restore(state: dict) -> Kept:
    """What a saved *state* keeps; StateError if it cannot be read."""
    version = state.get("version", 1)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise StateError(
            f"state version {version!r} is newer than this spawner's ({STATE_VERSION}): "
            "was the Hub downgraded? The server is not recognised; stop it on the node by hand "
            f"(its pid {state.get('pid')!r} on {state.get('node')!r})"
        )
    values = {name: state[name] for name in FIELDS if name in state}
    # Upgrades of older versions, one step at a time.
    if version < 2:
        values.update(job_id="", partition="")
    try:
        process = ServerProcess(
            pid=int(values["pid"]),
            start_time=int(values.get("start_time", 0)),
            port=int(values.get("port", 0)),
            log_path=str(values.get("log_path", "")),
            scripts_version=str(values.get("scripts_version", "")),
            image=str(values.get("image", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"state {state!r} has no usable pid, start_time or port: {e}") from None
    placed = Placed.from_state({k: str(v) for k, v in values.items() if k in Placed.FIELDS})
    return Kept(placed, process, str(values.get("certs_dir", "")))
