"""Run the scripts of one version on a node, as one user, over a pooled connection.

Where the scripts run from: the node-wide copy that ``invoke deploy``
installs (``{node_dir}/{version}``) when ``put_files.sh`` finds it safe (the
rule lives in scripts/common.sh, shared with ``check_node.sh``), else the
user's own copy (``{base_dir}/scripts/{version}``), sent over when missing.
Files travel on the command channel's stdin (``put_files.sh``), never by
SFTP: nodes without an sftp subsystem work, login banners cannot corrupt a
transfer, and no sftp-server lingers on a kept connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import paramiko

from .bundle import ScriptBundle
from .errors import CommandTimeout, ConnectError, RemoteError, default_log
from .pool import ConnectionPool, Pooled
from .protocol import ExitCode, LineRelay, ProgressCallback, Reply, ScriptCall, command_line, files_payload
from .ssh import Target, run_command

# Before this script, a node-wide copy not found earlier is looked for again.
RECHECK_SCRIPT = "start_singleuser.sh"
# Scripts safe to run a second time when the connection broke under them.
IDEMPOTENT_SCRIPTS = frozenset({"check_pid.sh", "stop.sh"})


class NodeSession:
    """Scripts of *bundle* run on *target*; use as a context manager.

    Without a *pool*, a connection of its own is opened and closed.
    *command_timeout* bounds the session's own housekeeping commands
    (finding and sending the scripts, files).
    """

    def __init__(
        self,
        target: Target,
        bundle: ScriptBundle,
        base_dir: str,
        log: logging.Logger = default_log,
        pool: ConnectionPool | None = None,
        node_dir: str = "",
        command_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.log = log
        self.bundle = bundle
        self.user_dir = f"{base_dir}/scripts/{bundle.version}"
        self.node_dir = f"{node_dir.rstrip('/')}/{bundle.version}" if node_dir else ""
        self.command_timeout = command_timeout
        self.pool = pool if pool is not None else ConnectionPool(idle_timeout=0, keepalive=0)
        self._own_pool = pool is None
        self._entry: Pooled | None = None

    def __enter__(self) -> NodeSession:
        self._entry = self.pool.acquire(self.target, self.log)
        return self

    def __exit__(self, *exc) -> None:
        if self._entry is not None:
            self.pool.release(self._entry)
            self._entry = None
        if self._own_pool:
            self.pool.close_all()

    @property
    def version(self) -> str:
        return self.bundle.version

    def call(self, call: ScriptCall, on_progress: ProgressCallback | None = None) -> Reply:
        """Run one :class:`ScriptCall` (see :meth:`run`)."""
        return self.run(call.script, call.args, call.stdin, call.timeout, on_progress)

    def run(
        self,
        script: str,
        args: Iterable[str],
        stdin: str = "",
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Reply:
        """Run *script* with *args*; put the scripts on the node first if need be.

        timeout: seconds the node may take to answer; after that the connection
        counts as broken (ConnectError), as when a node went silent mid-command.
        *on_progress* is called (in a worker thread) with each ``@progress``
        line the script prints, while it runs.
        """
        assert self._entry is not None, "use NodeSession as a context manager"
        args = list(args)
        reused = not self._entry.fresh
        try:
            return self._run_located(script, args, stdin, timeout, on_progress)
        except ConnectError:
            self.pool.discard(self._entry)
            if not (reused and script in IDEMPOTENT_SCRIPTS):
                raise
        # A kept connection broke (sshd restarted, a firewall forgot it):
        # once more on a new one.
        self.log.debug("connection to %s broke; reconnecting", self.target.host)
        self.pool.release(self._entry)
        self._entry = None
        self._entry = self.pool.acquire(self.target, self.log)
        try:
            return self._run_located(script, args, stdin, timeout, on_progress)
        except ConnectError:
            self.pool.discard(self._entry)
            raise

    def _run_located(self, script, args, stdin, timeout, on_progress) -> Reply:
        directory = self._locate(recheck=script == RECHECK_SCRIPT)
        reply = self._exec(command_line(f"{directory}/{script}", args), stdin, timeout, on_progress)
        if reply.exit_code == ExitCode.NO_SCRIPTS:
            # Someone removed that copy since we last looked.
            directory = self._locate(recheck=True, forget=True)
            reply = self._exec(command_line(f"{directory}/{script}", args), stdin, timeout, on_progress)
        return reply

    def _locate(self, recheck: bool, forget: bool = False) -> str:
        """The directory the scripts run from, found (and sent) once per pool."""
        key = (self.target, self.user_dir, self.node_dir)
        found = None if forget else self.pool.script_dirs.get(key)
        # A start looks for the node-wide copy again: one deployed since is used at once.
        if found is None or (recheck and self.node_dir and found != self.node_dir):
            found = self._prepare()
            self.pool.script_dirs[key] = found
        return found

    def _prepare(self) -> str:
        args = ["scripts", "--user-dir", self.user_dir, "--version", self.version]
        if self.node_dir:
            args += ["--node-dir", self.node_dir]
        reply = self._put_files(args)
        if reply.exit_code == ExitCode.NO_SCRIPTS:
            # Neither copy is there: send ours.
            reply = self._put_files([*args, "--payload"], self.bundle.files)
        if reply.exit_code != ExitCode.OK or not reply.data.get("dir"):
            raise RemoteError(
                f"cannot put the scripts into {self.target.host}:{self.user_dir}: {self._why(reply)}"
            )
        if reply.data.get("written"):
            self.log.info(
                "uploaded scripts version %s to %s:%s", self.version, self.target.host, self.user_dir
            )
        if reply.data.get("node_dir_problem"):
            self.log.debug(
                "node-wide scripts not used on %s: %s", self.target.host, reply.data["node_dir_problem"]
            )
        return reply.data["dir"]

    def put_private(self, directory: str, files: Mapping[str, bytes]) -> str:
        """Put *files* into *directory* on the node (0600 in 0700); its absolute path."""
        reply = self._put_files(["put", "--dir", directory], files)
        if reply.exit_code != ExitCode.OK or not reply.data.get("dir"):
            raise RemoteError(f"cannot copy files to {self.target.host}:{directory}: {self._why(reply)}")
        return reply.data["dir"]

    def remove_private(self, directory: str) -> None:
        """Remove what :meth:`put_private` put into *directory*."""
        reply = self._put_files(["remove", "--dir", directory])
        if reply.exit_code != ExitCode.OK:
            raise RemoteError(f"cannot remove {self.target.host}:{directory}: {self._why(reply)}")

    def _put_files(self, args: list[str], files: Mapping[str, bytes] | None = None) -> Reply:
        """Run put_files.sh, fed on stdin with *files* after it (it writes nothing else)."""
        stdin = self.bundle.fed_on_stdin("put_files.sh") + (files_payload(files) if files else "")
        return self._exec(command_line(None, args), stdin, self.command_timeout)

    @staticmethod
    def _why(reply: Reply) -> str:
        return reply.stderr or f"put_files.sh failed with exit code {reply.exit_code}"

    def _exec(
        self,
        command: str,
        stdin: str,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Reply:
        entry = self._entry
        shown = "bash " + command.split(" rss ", 1)[-1]  # without the launcher's fixed text
        self.log.debug("on %s as %s: %s", self.target.host, self.target.username, shown)
        try:
            if not entry.active():
                # Fabric would silently log in again, racing other threads: let the pool do it.
                raise EOFError("the connection was closed")
            # stderr goes into the relay while it arrives; it is captured all the same.
            relay = None if on_progress is None else LineRelay(on_progress).write
            with entry.sessions:
                self.pool.count_channel()
                return run_command(entry.conn, command, stdin, timeout, on_stderr=relay)
        except CommandTimeout:
            raise ConnectError(f"{self.target.host} did not answer within {timeout:g}s") from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectError(
                f"lost the connection to {self.target.host}: {type(e).__name__}: {e}",
                f"lost the connection to {self.target.host}",
            ) from None
        finally:
            entry.fresh = False
