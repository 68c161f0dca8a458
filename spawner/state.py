"""What the Hub keeps of a running server, so that a restarted Hub can poll and stop it.

The one place the state's fields are documented. A state carries
``version``; :func:`restore` reads it: a state written before versions were
read (no ``version``) is taken as version 1, and a version newer than this
spawner knows is refused (the server is then not recognised as running).
"""

from __future__ import annotations

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
}
# Version history: 1 had no job_id and partition (no Slurm placement); 2 added them.


class StateError(ValueError):
    """A saved state this spawner cannot read; the message says why."""


def dump(values: dict) -> dict:
    """The state to save for a server, *values* holding every field."""
    return {"version": STATE_VERSION, **{name: values[name] for name in FIELDS}}


def restore(state: dict) -> dict:
    """The fields of a saved *state* (only those present); StateError if unreadable."""
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
    return values


class KeptState:
    """The spawner's get_state, load_state and clear_state, from FIELDS.

    Mixed into RemoteSingularitySpawner, whose traits of the same names hold the values.
    """

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(dump({name: getattr(self, name) for name in FIELDS}))
        return state

    def load_state(self, state):
        super().load_state(state)
        if not state.get("pid"):
            return
        try:
            values = restore(state)
        except StateError as e:
            self.log.error("RemoteSingularitySpawner: cannot load the state of %s: %s", self._log_name, e)
            return
        for name, value in values.items():
            setattr(self, name, value)

    def clear_state(self):
        super().clear_state()
        for name in FIELDS:
            setattr(self, name, self.trait_defaults(name))
        self._unreachable_since = None
        self._steps.clear()
