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
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import fabric
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
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            return paramiko.PKey.from_path(path)
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
            "the fingerprint) or run `invoke deploy`."
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
    pkey = load_private_key(target.key_files)
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
        raise IdentityError(f"login as {where} refused: {e}") from None
    except (HostKeyError, IdentityError):
        conn.close()
        raise
    except (OSError, EOFError, paramiko.SSHException) as e:
        conn.close()
        raise ConnectError(f"cannot connect to {where}: {e or type(e).__name__}") from None
    return conn


def _mkdirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = [p for p in path.split("/") if p]
    current = "/" if path.startswith("/") else ""
    for part in parts:
        current = f"{current}{part}" if current in ("", "/") else f"{current}/{part}"
        try:
            sftp.stat(current)
        except FileNotFoundError:
            try:
                sftp.mkdir(current, 0o700)
            except OSError:
                # Another spawn of the same user may have made it meanwhile.
                if not stat.S_ISDIR(sftp.stat(current).st_mode):
                    raise


def upload_scripts(
    conn: fabric.Connection, bundle: ScriptBundle, remote_dir: str, log: logging.Logger = default_log
) -> None:
    """Put *bundle* into *remote_dir* unless it is there; atomic against races."""
    sftp = conn.sftp()
    try:
        sftp.stat(f"{remote_dir}/{SCRIPT_FILES[-1]}")
        return
    except FileNotFoundError:
        pass
    parent = remote_dir.rsplit("/", 1)[0]
    _mkdirs(sftp, parent)
    staging = f"{remote_dir}.tmp-{secrets.token_hex(4)}"
    sftp.mkdir(staging, 0o700)
    for name, data in bundle.files.items():
        with sftp.open(f"{staging}/{name}", "wb") as f:
            f.chmod(0o600)  # run as `bash FILE`: no execute bit needed
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
    log.info("uploaded scripts version %s to %s:%s", bundle.version, conn.host, remote_dir)


class _Payload(io.StringIO):
    """stdin for a remote command, handed to Invoke in one piece.

    Invoke reads a non-terminal stream one character at a time, which would
    become one SSH packet per character.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read()


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


# Scripts safe to run a second time when the connection broke under them.
IDEMPOTENT_SCRIPTS = frozenset({"check_pid.sh", "stop.sh"})


class NodeSession:
    """Run the scripts of one version on a node, over a pooled connection.

    Use as a context manager; without a pool, a connection of its own is
    opened and closed.
    """

    # Script versions known to be on (host, user, directory): skip the check.
    _uploaded: set[tuple[str, str, str]] = set()

    def __init__(
        self,
        target: Target,
        bundle: ScriptBundle,
        base_dir: str,
        log: logging.Logger = default_log,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.target = target
        self.log = log
        self.bundle = bundle
        self.script_dir = f"{base_dir}/scripts/{bundle.version}"
        self.pool = pool if pool is not None else ConnectionPool(idle_timeout=0, keepalive=0)
        self._own_pool = pool is None
        self._entry: _Pooled | None = None
        self._on_progress: ProgressCallback | None = None

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
        on_progress: ProgressCallback | None = None,
    ) -> Reply:
        """Run *script* with *args*; upload the scripts first if missing.

        *on_progress* is called (in a worker thread) with each ``@progress``
        line the script prints, while it runs.
        """
        assert self._entry is not None, "use NodeSession as a context manager"
        args = list(args)
        reused = not self._entry.fresh
        self._on_progress = on_progress
        try:
            return self._run_checked(script, args, stdin)
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
            return self._run_checked(script, args, stdin)
        except ConnectError:
            self.pool.discard(self._entry)
            raise

    def _run_checked(self, script: str, args: list[str], stdin: str) -> Reply:
        key = (self.target.host, self.target.username, self.script_dir)
        if key not in self._uploaded:
            self._upload()
        reply = self._run(script, args, stdin)
        if reply.exit_code == _EXIT_NO_SUCH_FILE and self.script_dir in reply.stderr:
            # Someone removed the uploaded copy since we last looked.
            self._uploaded.discard(key)
            self._upload()
            reply = self._run(script, args, stdin)
        return reply

    def _upload(self) -> None:
        entry = self._entry
        try:
            with entry.sftp_lock:
                upload_scripts(entry.conn, self.bundle, self.script_dir, self.log)
        except (OSError, EOFError, paramiko.SSHException) as e:
            if not entry.active():
                raise ConnectError(f"lost the connection to {self.target.host}: {e}") from None
            raise RemoteError(
                f"cannot upload the scripts to {self.target.host}:{self.script_dir}: {e}"
            ) from None
        self._uploaded.add((self.target.host, self.target.username, self.script_dir))

    def _run(self, script: str, args: Iterable[str], stdin: str) -> Reply:
        entry = self._entry
        command = shlex.join(["bash", f"{self.script_dir}/{script}", *args])
        self.log.debug("on %s as %s: %s", self.target.host, self.target.username, command)
        try:
            if not entry.active():
                # Fabric would silently log in again, racing other threads: let the pool do it.
                raise EOFError("the connection was closed")
            relay = {}
            if self._on_progress is not None:
                # Echo stderr (only) into the relay while it arrives; it is captured all the same.
                relay = {"err_stream": LineRelay(self._on_progress), "hide": "stdout"}
            with entry.sessions:
                result = entry.conn.run(command, in_stream=_Payload(stdin), **relay)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectError(f"lost the connection to {self.target.host}: {e}") from None
        finally:
            entry.fresh = False
        return parse_reply(result.exited, result.stdout, result.stderr)
