"""Run the node scripts over SSH with Fabric.

Knows nothing of JupyterHub. Every function here blocks (network, file
reads) and is meant to run in a worker thread.

The protocol with the scripts (see scripts/common.sh):

- argv carries only validated, non-secret values, joined with
  :func:`shlex.join`;
- stdin carries the server's environment as NUL-separated ``KEY=VALUE``
  records (the API token among them);
- stdout carries one JSON line; stderr carries diagnostics for a person,
  and ``@progress PERCENT MESSAGE`` lines that are relayed while the script
  runs (see :class:`LineRelay`) and left out of :attr:`Reply.stderr`;
- the exit code is one of :class:`ExitCode`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import fabric
import invoke
import paramiko

# Callers pass their own logger (the spawner passes the Hub's); this one is
# the fallback for use outside JupyterHub.
default_log = logging.getLogger(__name__)

SCRIPT_FILES = ("common.sh", "start_singleuser.sh", "check_pid.sh", "stop.sh", "node_status.sh")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROGRESS_RE = re.compile(r"@progress (\d{1,3}) (\S.*)")
# bash's status for "script file not found".
_EXIT_NO_SUCH_FILE = 127


class ExitCode(IntEnum):
    """Exit codes of the node scripts (mirrors the table in scripts/common.sh)."""

    OK = 0
    NOT_RUNNING = 3
    SERVER_DIED = 4
    START_TIMEOUT = 5
    NO_FREE_PORT = 6
    BAD_INPUT = 7
    STOP_FAILED = 8
    USAGE = 64


class RemoteError(Exception):
    """Something went wrong on the way to the node or on it."""


class ConnectError(RemoteError):
    """The node could not be reached (network, sshd down, timeout)."""


class HostKeyError(RemoteError):
    """The node's host key is unknown or has changed: the spawn is refused."""


class IdentityError(RemoteError):
    """The user's private key is missing, unreadable or unusable, or login failed."""


@dataclass(frozen=True)
class ScriptBundle:
    """The scripts of one version, as uploaded to the nodes."""

    files: Mapping[str, bytes]
    version: str

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ScriptBundle:
        directory = Path(directory)
        files = {}
        digest = hashlib.sha256()
        for name in SCRIPT_FILES:
            data = (directory / name).read_bytes()
            files[name] = data
            digest.update(name.encode() + b"\0" + data + b"\0")
        return cls(files=files, version=digest.hexdigest()[:16])


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect."""

    host: str
    username: str
    key_files: tuple[str, ...]
    known_hosts_files: tuple[str, ...]
    port: int = 22
    connect_timeout: float = 10.0
    verify_host_key: bool = True


@dataclass
class Reply:
    exit_code: int
    data: dict = field(default_factory=dict)
    stderr: str = ""


def load_private_key(paths: Sequence[str]) -> paramiko.PKey:
    """Load the first of *paths* that exists (any type paramiko knows)."""
    return find_private_key(paths)[1]


def find_private_key(paths: Sequence[str]) -> tuple[str, paramiko.PKey]:
    """The first of *paths* that exists, and its key loaded; IdentityError if none is usable."""
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            return path, paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError) as e:
            # cryptography says "Password was not given but private key is encrypted".
            if isinstance(e, TypeError) and "assword" not in str(e):
                raise IdentityError(f"cannot load the private key {path}: {e}") from None
            raise IdentityError(
                f"the private key {path} is protected by a passphrase, which the spawner "
                "cannot type: give this user a key without a passphrase for the compute nodes"
            ) from None
        except (OSError, ValueError, paramiko.SSHException) as e:
            raise IdentityError(f"cannot load the private key {path}: {e}") from None
    raise IdentityError(
        "no private key found; looked for: " + ", ".join(paths)
        + ". Create one (ssh-keygen -t ed25519) and add it to ~/.ssh/authorized_keys"
    )


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"the host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in "
            f"known_hosts: refusing to connect. If it is the node's real key, add it to "
            "/etc/ssh/ssh_known_hosts (e.g. `ssh-keyscan` on a trusted path, then compare "
            "the fingerprint); `invoke check` then shows every node it can reach."
        )


class _AcceptUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def missing_host_key(self, client, hostname, key):
        self.log.warning(
            "host key checking is DISABLED: accepting %s key %s of %s unverified",
            key.get_name(), key.fingerprint, hostname,
        )


def _fabric_config() -> fabric.Config:
    # No ssh_config or Fabric/Invoke config files of the Hub's account (lazy):
    # what we connect to and how is decided by the spawner's traits alone.
    return fabric.Config(
        ssh_config=paramiko.SSHConfig(),
        lazy=True,
        overrides={"run": {"hide": True, "warn": True, "echo_stdin": False, "pty": False}},
    )


def connect(target: Target, log: logging.Logger = default_log) -> fabric.Connection:
    """Open an SSH connection as the user, with the host key verified."""
    key_path, pkey = find_private_key(target.key_files)
    conn = fabric.Connection(
        host=target.host,
        user=target.username,
        port=target.port,
        config=_fabric_config(),
        connect_timeout=max(1, round(target.connect_timeout)),
        connect_kwargs={
            "pkey": pkey,
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": target.connect_timeout,
            "auth_timeout": target.connect_timeout,
        },
    )
    client = conn.client
    if target.verify_host_key:
        client.set_missing_host_key_policy(_RejectUnknownHost())
        for path in target.known_hosts_files:
            if os.path.isfile(path):
                try:
                    client.get_host_keys().load(path)
                except (OSError, paramiko.SSHException) as e:
                    log.warning("cannot read known_hosts file %s: %s", path, e)
    else:
        client.set_missing_host_key_policy(_AcceptUnknownHost(log))
    where = f"{target.username}@{target.host}:{target.port}"
    try:
        conn.open()
    except paramiko.BadHostKeyException as e:
        conn.close()
        raise HostKeyError(
            f"the host key of {target.host} has CHANGED (offered {e.key.get_name()} "
            f"{e.key.fingerprint}, known {e.expected_key.fingerprint}): refusing to connect. "
            "This can mean an attack; if the node was reinstalled, replace its entry in "
            "known_hosts."
        ) from None
    except paramiko.AuthenticationException as e:
        conn.close()
        raise IdentityError(
            f"login as {where} with the key {key_path} refused ({e}): add {key_path}.pub to "
            f"~{target.username}/.ssh/authorized_keys on the node, and make sure ~/.ssh and that "
            "file are writable by the user alone (sshd ignores them otherwise)"
        ) from None
    except (HostKeyError, IdentityError):
        conn.close()
        raise
    except (OSError, EOFError, paramiko.SSHException) as e:
        conn.close()
        raise ConnectError(f"cannot connect to {where}: {e or type(e).__name__}") from None
    # Every command on a kept connection opens a channel, and paramiko waits an hour for
    # the node to answer that: a node gone silent (link down, powered off) must fail the
    # command as a new connection to it would, within the connect timeout.
    conn.transport.channel_timeout = target.connect_timeout
    return conn


def probe_port(host: str, port: int, timeout: float) -> bool | None:
    """Whether something accepts TCP connections on *host*:*port*.

    True: it does; False: the host answered that nothing listens there
    (connection refused); None: no answer (timeout, no route), so nothing can
    be said.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None


def _mkdirs(sftp: paramiko.SFTPClient, path: str, mode: int = 0o700) -> None:
    parts = [p for p in path.split("/") if p]
    current = "/" if path.startswith("/") else ""
    for part in parts:
        current = f"{current}{part}" if current in ("", "/") else f"{current}/{part}"
        try:
            sftp.stat(current)
        except FileNotFoundError:
            try:
                sftp.mkdir(current, mode)
            except OSError:
                # Another spawn of the same user may have made it meanwhile.
                if not stat.S_ISDIR(sftp.stat(current).st_mode):
                    raise


def upload_scripts(
    conn: fabric.Connection,
    bundle: ScriptBundle,
    remote_dir: str,
    log: logging.Logger = default_log,
    mode: int = 0o700,
) -> None:
    """Put *bundle* into *remote_dir* unless it is there; atomic against races.

    The directories get *mode* (0700 for a user's own copy, 0755 for the
    node-wide one), the files the same without execute bits: they run as
    ``bash FILE``.
    """
    sftp = conn.sftp()
    try:
        sftp.stat(f"{remote_dir}/{SCRIPT_FILES[-1]}")
        return
    except FileNotFoundError:
        pass
    parent = remote_dir.rsplit("/", 1)[0]
    _mkdirs(sftp, parent, mode)
    staging = f"{remote_dir}.tmp-{secrets.token_hex(4)}"
    sftp.mkdir(staging, mode)
    sftp.chmod(staging, mode)  # whatever the sftp server's umask
    for name, data in bundle.files.items():
        with sftp.open(f"{staging}/{name}", "wb") as f:
            f.chmod(mode & 0o666)
            f.write(data)
    try:
        sftp.rename(staging, remote_dir)
    except OSError:
        # Another spawn of the same user won the race: keep its copy.
        for name in bundle.files:
            sftp.remove(f"{staging}/{name}")
        sftp.rmdir(staging)
        if not stat.S_ISDIR(sftp.stat(remote_dir).st_mode):
            raise
        return
    log.info("uploaded scripts version %s to %s:%s", bundle.version, conn.host, remote_dir)


def untrusted_because(sftp: paramiko.SFTPClient, directory: str) -> str:
    """Why the node-wide scripts in *directory* may not be used ("" if they may).

    They may when every script is there and the files, the directory and each
    directory above it belong to root and are not writable by group or others:
    then no user can change what another user's server runs. The same rule as
    scripts/check_node.sh.
    """
    paths = [f"{directory}/{name}" for name in SCRIPT_FILES]
    parent = directory
    while parent not in ("", "/"):
        paths.append(parent)
        parent = parent.rsplit("/", 1)[0]
    for path in paths:
        try:
            st = sftp.stat(path)
        except FileNotFoundError:
            return f"{path} does not exist"
        if st.st_uid != 0:
            return f"{path} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022:
            return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def put_private_files(sftp: paramiko.SFTPClient, directory: str, files: Mapping[str, bytes]) -> str:
    """Replace *directory* by one holding *files*, for the login user's eyes only.

    The files are written into a fresh 0700 staging directory (nobody else can
    reach them while their mode is still the server's default), made 0600,
    then the directory is renamed into place. Relative paths are under the
    login directory. Returns the absolute path of *directory*.
    """
    _mkdirs(sftp, directory.rsplit("/", 1)[0] if "/" in directory else ".")
    staging = f"{directory}.tmp-{secrets.token_hex(4)}"
    sftp.mkdir(staging, 0o700)
    sftp.chmod(staging, 0o700)  # whatever the server's umask made of it
    try:
        for name, data in files.items():
            with sftp.open(f"{staging}/{name}", "wb") as f:
                f.chmod(0o600)
                f.write(data)
        remove_private_files(sftp, directory)
        sftp.rename(staging, directory)
    except BaseException:
        with contextlib.suppress(Exception):
            remove_private_files(sftp, staging)
        raise
    return sftp.normalize(directory)


def remove_private_files(sftp: paramiko.SFTPClient, directory: str) -> None:
    """Remove *directory* and the files in it; nothing to do if it is gone."""
    try:
        names = sftp.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(f"{directory}/{name}")
    with contextlib.suppress(FileNotFoundError):
        sftp.rmdir(directory)


class _Payload(io.StringIO):
    """stdin for a remote command, handed to Invoke in one piece.

    Invoke reads a non-terminal stream one character at a time, which would
    become one SSH packet per character.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read()


def _stdin_for(data: str) -> _Payload | bool:
    """What to hand Invoke as the command's stdin: *data*, or none at all.

    Invoke sends EOF once it has read its stream, possibly after a quick
    command has finished and its channel is closed. paramiko still sends that
    EOF, and sshd answers an EOF for a channel it no longer has by dropping
    the whole connection, with every other command running on it. So a
    command without input gets no stdin (hence no EOF), and one with input
    (start_singleuser.sh) reads it to the end before it can exit.
    """
    return _Payload(data) if data else False


def env_payload(env: Mapping[str, str]) -> str:
    """Encode *env* as NUL-separated ``KEY=VALUE`` records."""
    records = []
    for key, value in env.items():
        value = str(value)
        if not _ENV_KEY_RE.fullmatch(key) or "\0" in value:
            raise ValueError(f"environment variable {key!r} cannot be passed to the node")
        records.append(f"{key}={value}\0")
    return "".join(records)


def parse_progress(line: str) -> tuple[int, str] | None:
    """``(percent, message)`` from an ``@progress PERCENT MESSAGE`` line, else None."""
    match = _PROGRESS_RE.fullmatch(line.strip())
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1)), match.group(2)


ProgressCallback = Callable[[int, str], None]


class LineRelay:
    """A write-only text stream that hands each ``@progress`` line to a callback.

    Given to Invoke as the command's ``err_stream``: it is written from
    Invoke's reader thread, in chunks that need not end at a line break.
    """

    def __init__(self, on_progress: ProgressCallback) -> None:
        self._on_progress = on_progress
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            event = parse_progress(line)
            if event is not None:
                self._on_progress(*event)
        return len(text)

    def flush(self) -> None:
        pass


def parse_reply(exit_code: int, stdout: str, stderr: str) -> Reply:
    """Turn a script's output into a :class:`Reply` (JSON on the last stdout line).

    ``@progress`` lines are not diagnostics: they are left out of ``stderr``.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    data: dict = {}
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
    diagnostics = "\n".join(line for line in stderr.splitlines() if parse_progress(line) is None)
    return Reply(exit_code=exit_code, data=data, stderr=diagnostics.strip())


def run_command(
    conn: fabric.Connection, command: str, stdin: str = "", timeout: float | None = None, **run_kwargs
) -> Reply:
    """Run *command* (built with :func:`shlex.join`) on *conn*, *stdin* on its channel.

    timeout: seconds to wait for it (invoke.CommandTimedOut after that); None waits for ever.
    run_kwargs: more of Fabric's run() options (err_stream and hide, for a progress relay).
    """
    limit = {} if timeout is None else {"timeout": timeout}
    result = conn.run(command, in_stream=_stdin_for(stdin), **limit, **run_kwargs)
    return parse_reply(result.exited, result.stdout, result.stderr)


class _Pooled:
    """One open connection in a :class:`ConnectionPool`, with its guards."""

    def __init__(self, key: Target, conn: fabric.Connection, max_sessions: int) -> None:
        self.key = key
        self.conn = conn
        # sshd refuses more than MaxSessions (default 10) channels per connection.
        self.sessions = threading.BoundedSemaphore(max_sessions)
        # SFTP (the script upload) is not safe to share between threads.
        self.sftp_lock = threading.Lock()
        self.borrowed = 0
        self.last_used = time.monotonic()
        self.fresh = True  # not yet used for a command
        self.discarded = False

    def active(self) -> bool:
        transport = self.conn.transport
        return transport is not None and transport.is_active()


class ConnectionPool:
    """SSH connections kept open per :class:`Target` (node and user) and shared.

    Any number of threads may borrow the same connection: each command gets
    its own channel (at most *max_sessions* at once per connection). A
    connection is closed when it has been unused for *idle_timeout* seconds
    (checked whenever the pool is used) or found dead; keepalives every
    *keepalive* seconds notice a vanished peer.
    """

    def __init__(
        self,
        idle_timeout: float = 120.0,
        keepalive: int = 30,
        max_sessions: int = 8,
        opener: Callable[[Target, logging.Logger], fabric.Connection] | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.max_sessions = max_sessions
        self._open = opener if opener is not None else connect
        self._lock = threading.Lock()
        self._entries: dict[Target, _Pooled] = {}
        self._connecting: dict[Target, threading.Lock] = {}
        self.opened = 0  # connections opened so far (for logs and benchmarks)

    def acquire(self, target: Target, log: logging.Logger = default_log) -> _Pooled:
        """A live connection for *target*, opened if need be; give it back with release()."""
        self.close_idle()
        with self._lock:
            connecting = self._connecting.setdefault(target, threading.Lock())
        # One thread connects; the others for the same target wait and share.
        with connecting:
            with self._lock:
                entry = self._entries.get(target)
                if entry is not None and entry.active():
                    entry.borrowed += 1
                    return entry
            if entry is not None:
                self.discard(entry)
            conn = self._open(target, log)
            transport = conn.transport
            if transport is not None and self.keepalive:
                transport.set_keepalive(self.keepalive)
            entry = _Pooled(target, conn, self.max_sessions)
            with self._lock:
                self._entries[target] = entry
                self.opened += 1
                entry.borrowed += 1
            log.debug("opened SSH connection %s@%s:%d", target.username, target.host, target.port)
            return entry

    def release(self, entry: _Pooled) -> None:
        with self._lock:
            entry.borrowed -= 1
            entry.last_used = time.monotonic()
            close = entry.discarded and entry.borrowed == 0
        if close:
            _close_quietly(entry.conn)

    def discard(self, entry: _Pooled) -> None:
        """Forget a connection that failed; it is closed when the last borrower releases it."""
        with self._lock:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            entry.discarded = True

    def close_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                e for e in self._entries.values()
                if e.borrowed == 0 and (now - e.last_used > self.idle_timeout or not e.active())
            ]
            for entry in idle:
                del self._entries[entry.key]
        for entry in idle:
            _close_quietly(entry.conn)

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            _close_quietly(entry.conn)

    def __len__(self) -> int:
        return len(self._entries)


def _close_quietly(conn: fabric.Connection) -> None:
    # Closing a connection that already broke may fail in any way; it is gone either way.
    with contextlib.suppress(Exception):
        conn.close()


# Before this script, a node-wide copy not found earlier is looked for again.
RECHECK_SCRIPT = "start_singleuser.sh"
# Scripts safe to run a second time when the connection broke under them.
IDEMPOTENT_SCRIPTS = frozenset({"check_pid.sh", "stop.sh"})


class NodeSession:
    """Run the scripts of one version on a node, over a pooled connection.

    The scripts run from the node-wide copy that ``invoke deploy`` installs
    (``{node_dir}/{version}``, root-owned) when it is there and safe, else
    from the user's own copy (``{base_dir}/scripts/{version}``), uploaded
    when missing. Use as a context manager; without a pool, a connection of
    its own is opened and closed.
    """

    # Where the scripts of a version were found on (host, user, user dir, node dir): skip the check.
    _found: dict[tuple[str, str, str, str], str] = {}

    def __init__(
        self,
        target: Target,
        bundle: ScriptBundle,
        base_dir: str,
        log: logging.Logger = default_log,
        pool: ConnectionPool | None = None,
        node_dir: str = "",
    ) -> None:
        self.target = target
        self.log = log
        self.bundle = bundle
        self.user_dir = f"{base_dir}/scripts/{bundle.version}"
        self.node_dir = f"{node_dir.rstrip('/')}/{bundle.version}" if node_dir else ""
        self.script_dir = self.user_dir
        self.pool = pool if pool is not None else ConnectionPool(idle_timeout=0, keepalive=0)
        self._own_pool = pool is None
        self._entry: _Pooled | None = None

    def __enter__(self) -> NodeSession:
        self._entry = self.pool.acquire(self.target, self.log)
        return self

    def __exit__(self, *exc) -> None:
        if self._entry is not None:
            self.pool.release(self._entry)
            self._entry = None
        if self._own_pool:
            self.pool.close_all()

    def run(
        self,
        script: str,
        args: Iterable[str],
        stdin: str = "",
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Reply:
        """Run *script* with *args*; upload the scripts first if missing.

        timeout: seconds the node may take to answer; after that the connection
        counts as broken (ConnectError), as when a node went silent mid-command.
        *on_progress* is called (in a worker thread) with each ``@progress``
        line the script prints, while it runs.
        """
        assert self._entry is not None, "use NodeSession as a context manager"
        args = list(args)
        reused = not self._entry.fresh
        try:
            return self._run_checked(script, args, stdin, timeout, on_progress)
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
            return self._run_checked(script, args, stdin, timeout, on_progress)
        except ConnectError:
            self.pool.discard(self._entry)
            raise

    def _run_checked(
        self, script: str, args: list[str], stdin: str, timeout: float | None, on_progress
    ) -> Reply:
        key = (self.target.host, self.target.username, self.user_dir, self.node_dir)
        found = self._found.get(key)
        if found is None or (script == RECHECK_SCRIPT and found != self.node_dir and self.node_dir):
            # A start looks for the node-wide copy again: one deployed since is used at once.
            found = self._prepare(key)
        self.script_dir = found
        reply = self._run(script, args, stdin, timeout, on_progress)
        if reply.exit_code == _EXIT_NO_SUCH_FILE and self.script_dir in reply.stderr:
            # Someone removed that copy since we last looked.
            self._found.pop(key, None)
            self.script_dir = self._prepare(key)
            reply = self._run(script, args, stdin, timeout, on_progress)
        return reply

    def _prepare(self, key: tuple[str, str, str, str]) -> str:
        """Use the node-wide scripts if they are fit, else upload the user's copy if missing."""

        def choose(sftp: paramiko.SFTPClient) -> str:
            why_not = untrusted_because(sftp, self.node_dir) if self.node_dir else "not configured"
            if not why_not:
                return self.node_dir
            self.log.debug("node-wide scripts not used on %s: %s", self.target.host, why_not)
            upload_scripts(self._entry.conn, self.bundle, self.user_dir, self.log)
            return self.user_dir

        where = self._sftp(f"upload the scripts to {self.target.host}:{self.user_dir}", choose)
        self._found[key] = where
        return where

    def put_private(self, directory: str, files: Mapping[str, bytes]) -> str:
        """Put *files* into *directory* on the node (0600 in 0700); its absolute path."""
        return self._sftp(
            f"copy files to {self.target.host}:{directory}",
            lambda sftp: put_private_files(sftp, directory, files),
        )

    def remove_private(self, directory: str) -> None:
        """Remove what :meth:`put_private` put into *directory*."""
        self._sftp(
            f"remove {self.target.host}:{directory}",
            lambda sftp: remove_private_files(sftp, directory),
        )

    def _sftp(self, what: str, action: Callable[[paramiko.SFTPClient], object]):
        """Run *action* with the connection's SFTP session, one thread at a time."""
        assert self._entry is not None, "use NodeSession as a context manager"
        entry = self._entry
        try:
            with entry.sftp_lock:
                return action(entry.conn.sftp())
        except (OSError, EOFError, paramiko.SSHException) as e:
            if not entry.active():
                raise ConnectError(f"lost the connection to {self.target.host}: {e}") from None
            raise RemoteError(f"cannot {what}: {e}") from None

    def _run(
        self,
        script: str,
        args: Iterable[str],
        stdin: str,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Reply:
        entry = self._entry
        command = shlex.join(["bash", f"{self.script_dir}/{script}", *args])
        self.log.debug("on %s as %s: %s", self.target.host, self.target.username, command)
        try:
            if not entry.active():
                # Fabric would silently log in again, racing other threads: let the pool do it.
                raise EOFError("the connection was closed")
            relay = {}
            if on_progress is not None:
                # Echo stderr (only) into the relay while it arrives; it is captured all the same.
                relay = {"err_stream": LineRelay(on_progress), "hide": "stdout"}
            with entry.sessions:
                return run_command(entry.conn, command, stdin, timeout, **relay)
        except invoke.CommandTimedOut:
            raise ConnectError(f"{self.target.host} did not answer within {timeout:g}s") from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectError(f"lost the connection to {self.target.host}: {e}") from None
        finally:
            entry.fresh = False
