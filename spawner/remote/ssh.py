"""SSH with Fabric: log in as a user with the host key verified, run one command.

Every function here blocks (network, key files) and is meant for a worker thread.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import fabric
import paramiko

from .certificates import Authorities
from .errors import TOLD, CommandTimeout, ConnectError, HostKeyError, IdentityError, default_log
from .known_hosts import FileCache, KnownHosts, Status, host_name
from .protocol import Reply, parse_reply

if TYPE_CHECKING:
    from .certificates import CertificateRequest


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
    # Log in with a fresh certificate from the Hub's CA instead of key_files.
    certificate: CertificateRequest | None = None

    def __str__(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


def load_private_key(paths: Sequence[str]) -> paramiko.PKey:
    """Load the first of *paths* that exists (any type paramiko knows)."""
    return find_private_key(paths)[1]


def find_private_key(paths: Sequence[str]) -> tuple[str, paramiko.PKey]:
    """The first of *paths* that exists, and its key loaded; IdentityError if none is usable.

    The user reads the key's place in their home (~/.ssh/...); the Hub's log, its path.
    """
    for path in paths:
        try:
            os.stat(path)
        except PermissionError as e:
            # A home the Hub's account cannot enter (NFS root_squash): not a missing key.
            raise IdentityError(
                f"the Hub's account cannot read {path}: {e.strerror}. Is the home on NFS with "
                "root_squash? Give the Hub read access to the users' ~/.ssh, or use ssh_auth = "
                "'certificate' (no home is read)",
                f"the Hub cannot read your SSH key in your home directory (it has no access there); {TOLD}",
            ) from None
        except OSError:
            continue
        shown = _in_home(path)
        try:
            return path, paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError) as e:
            # cryptography says "Password was not given but private key is encrypted".
            if isinstance(e, TypeError) and "assword" not in str(e):
                raise _unusable_key(path, shown, e) from None
            raise IdentityError(
                f"the private key {path} is protected by a passphrase, which the spawner "
                "cannot type: give this user a key without a passphrase for the compute nodes",
                f"your private key {shown} is protected by a passphrase, which the spawner cannot "
                "type: give this user a key without a passphrase for the compute nodes",
            ) from None
        except (OSError, ValueError, paramiko.SSHException) as e:
            raise _unusable_key(path, shown, e) from None
    raise IdentityError(
        "no private key found; looked for: "
        + ", ".join(paths)
        + ". Create one (ssh-keygen -t ed25519) and add it to ~/.ssh/authorized_keys",
        "no private key of yours was found; looked for: "
        + ", ".join(_in_home(p) for p in paths)
        + ". Create one (ssh-keygen -t ed25519) and add it to ~/.ssh/authorized_keys",
    )


def _unusable_key(path: str, shown: str, error: Exception) -> IdentityError:
    return IdentityError(
        f"cannot load the private key {path}: {type(error).__name__}: {error}",
        f"your private key {shown} cannot be used (not an ed25519, ecdsa or rsa key without a passphrase)",
    )


def _in_home(path: str) -> str:
    """*path* as its owner knows it: ~/.ssh/... for a file in a home's .ssh, else its name."""
    head, sep, tail = path.partition("/.ssh/")
    return f"~/.ssh/{tail}" if sep and head else os.path.basename(path)


@dataclass
class Caches:
    """What logins keep between them: parsed known_hosts files and loaded CAs (the Hub keeps one)."""

    known_hosts: FileCache = field(default_factory=FileCache)
    authorities: Authorities = field(default_factory=Authorities)


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    """Accept the host key if the known_hosts files list it for the host, else refuse saying why.

    paramiko asks this for every host key (its own HostKeys stay empty), with
    the host named as in known_hosts: ``[host]:port`` for a port other than 22.
    """

    def __init__(self, known: KnownHosts | None = None, host: str | None = None) -> None:
        self.known = known if known is not None else KnownHosts()
        self.host = host  # as the spawner names it (the address), for the CHANGED message

    def missing_host_key(self, client, hostname, key):
        verdict = self.known.check(hostname, key)
        offered = f"{key.get_name()} {key.fingerprint}"
        if verdict.status is Status.KNOWN:
            return
        if verdict.status is Status.REVOKED:
            raise HostKeyError(
                f"the host key of {hostname} ({offered}) is marked @revoked in {verdict.entry.path}: "
                f"refusing to connect (line {verdict.entry.lineno}). A revoked key may be in other "
                "hands: the node needs a new host key, listed in known_hosts.",
                f"the host key of {hostname} ({offered}) is marked @revoked: refusing to connect. "
                f"The node needs a new host key; {TOLD}",
            )
        if verdict.status is Status.CHANGED:
            raise HostKeyError(
                f"the host key of {self.host or hostname} has CHANGED (offered {offered}, known "
                f"{verdict.entry.key.fingerprint}): refusing to connect. This can mean an attack; "
                "if the node was reinstalled, replace its entry in known_hosts."
            )
        unused = "".join(
            f" The @cert-authority lines of {path} are not used: host certificates cannot be verified."
            for path in self.known.cert_authority_files
        )
        raise HostKeyError(
            f"the host key of {hostname} ({offered}) is not in "
            f"known_hosts: refusing to connect. If it is the node's real key, add it to "
            "/etc/ssh/ssh_known_hosts (e.g. `ssh-keyscan` on a trusted path, then compare "
            "the fingerprint); `remote-singularity-spawner check` then shows every node it can "
            "reach." + unused,
            f"the host key of {hostname} ({offered}) is not in known_hosts: refusing to connect; {TOLD}",
        )


# AES-GCM first: its tag is checked inside `cryptography`, where paramiko's HMAC
# ciphers compare every packet's MAC byte by byte in Python, about a fifth of the
# Hub's CPU for a poll (docs/benchmarks.md, "At scale"). The others stay as
# fallbacks for an sshd without GCM.
_AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport_factory(known: KnownHosts | None, name: str):
    """A Transport factory preferring AES-GCM and, with *known*, asking the node for a key of
    a type listed for it first, as ssh does (paramiko does so only for its own HostKeys)."""

    def make(sock, **kwargs) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        offered = options.ciphers
        options.ciphers = [c for c in _AEAD_CIPHERS if c in offered] + [
            c for c in offered if c not in _AEAD_CIPHERS
        ]
        if known is not None:
            options.key_types = known.preferred_algorithms(name, options.key_types)
        return transport

    return make


class _AcceptUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def missing_host_key(self, client, hostname, key):
        self.log.warning(
            "host key checking is DISABLED: accepting %s key %s of %s unverified",
            key.get_name(),
            key.fingerprint,
            hostname,
        )


def _fabric_config() -> fabric.Config:
    # No ssh_config or Fabric/Invoke config files of the Hub's account (lazy):
    # what we connect to and how is decided by the spawner's traits alone.
    return fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True)


def connect(
    target: Target, log: logging.Logger = default_log, caches: Caches | None = None
) -> fabric.Connection:
    """Open an SSH connection as the user, with the host key verified.

    *caches*: known_hosts files and CAs kept from earlier logins; None: read them now.
    """
    caches = caches if caches is not None else Caches()
    if target.certificate is not None:
        pkey = target.certificate.login_key(log, caches.authorities)
        why = (
            f"the node's sshd must trust that CA{{}}, accept {target.username!r} as the "
            "certificate's principal, and see the certificate as valid now (are the Hub's and "
            "the node's clocks right?)"
        )
        refused = f"with a certificate of the Hub's CA ({target.certificate.ca_path}) refused: " + why.format(
            " (TrustedUserCAKeys; `remote-singularity-spawner deploy` installs it)"
        )
        refused_for_user = f"with a certificate of the Hub's CA refused: {why.format('')}; {TOLD}"
    else:
        try:
            key_path, pkey = find_private_key(target.key_files)
        except IdentityError as e:
            raise IdentityError(str(e), f"for the login {target.username}, {e.for_user}") from None
        fix = (
            f"add {{0}}.pub to ~{target.username}/.ssh/authorized_keys on the node, and make sure "
            "~/.ssh and that file are writable by the user alone (sshd ignores them otherwise)"
        )
        refused = f"with the key {key_path} refused: " + fix.format(key_path)
        refused_for_user = f"with the key {_in_home(key_path)} refused: " + fix.format(_in_home(key_path))
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
    known = None
    if target.verify_host_key:
        # Nothing goes into paramiko's own HostKeys: the policy checks every key offered.
        known = KnownHosts.load(target.known_hosts_files, log, caches.known_hosts)
        client.set_missing_host_key_policy(_RejectUnknownHost(known, target.host))
    else:
        client.set_missing_host_key_policy(_AcceptUnknownHost(log))
    conn.connect_kwargs["transport_factory"] = _transport_factory(known, host_name(target.host, target.port))
    try:
        conn.open()
    except paramiko.AuthenticationException as e:
        conn.close()
        raise IdentityError(
            f"login as {target} {refused} ({e})", f"login as {target} {refused_for_user}"
        ) from None
    except (HostKeyError, IdentityError):
        conn.close()
        raise
    except (OSError, EOFError, paramiko.SSHException) as e:
        conn.close()
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ConnectError(
            f"cannot connect to {target}: {type(e).__name__}: {e}", f"cannot connect to {target}: {why}"
        ) from None
    # Every command on a kept connection opens a channel, and paramiko waits an hour for
    # the node to answer that: a node gone silent (link down, powered off) must fail the
    # command as a new connection to it would, within the connect timeout.
    conn.transport.channel_timeout = target.connect_timeout
    conn.transport.sock.settimeout(READER_WAKEUP)
    return conn


# How long a kept connection's reader thread sleeps in recv() before paramiko
# looks at its keepalive and closing flags. paramiko's own 0.1 s wakes every
# idle connection ten times a second: with hundreds of users, that alone was a
# steady share of the Hub's CPU (docs/benchmarks.md, "At scale").
READER_WAKEUP = 5.0
_CHUNK = 32768


def run_command(
    conn: fabric.Connection,
    command: str,
    stdin: str = "",
    timeout: float | None = None,
    on_stderr: Callable[[str], object] | None = None,
) -> Reply:
    """Run *command* (see :func:`protocol.command_line`) on a channel of *conn*, *stdin* on it.

    The channel comes from Fabric's ``create_session()`` and is read here, in
    the calling thread: Invoke's runner, behind ``Connection.run``, starts
    threads and polls for every command, which cost twice the CPU of the
    command itself with hundreds of servers polled.

    stdin: sent whole, then EOF, right after the command starts. A command
    without input gets no EOF at all: sshd answers an EOF for a channel that
    already closed (a quick command) by dropping the whole connection, with
    every other command on it. Scripts that take input read it to the end
    before they can exit.
    timeout: seconds to wait for the command's end (CommandTimeout after that);
    None waits for ever. on_stderr: called with stderr's text as it arrives.
    EOFError if the connection broke meanwhile.
    """
    channel = conn.create_session()
    try:
        channel.settimeout(timeout)  # also bounds sending stdin (socket.timeout)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin.encode())
            channel.shutdown_write()
        deadline = None if timeout is None else time.monotonic() + timeout
        stdout, stderr = _read_until_eof(channel, deadline, timeout, on_stderr)
        if not channel.status_event.wait(_left(deadline, timeout)):
            raise CommandTimeout(f"no exit status within {timeout:g}s")
        if channel.exit_status == -1 and not conn.transport.is_active():
            raise EOFError("the connection closed during the command")
        return parse_reply(channel.exit_status, stdout, stderr)
    finally:
        channel.close()


def _left(deadline: float | None, timeout: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise CommandTimeout(f"no end within {timeout:g}s")
    return left


def _read_until_eof(channel: paramiko.Channel, deadline, timeout, on_stderr) -> tuple[str, str]:
    """stdout and stderr of *channel* until the node's EOF (or close), waiting in select()."""
    out: list[bytes] = []
    err: list[bytes] = []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def drain() -> bool:
        got = False
        while channel.recv_ready():
            out.append(channel.recv(_CHUNK))
            got = True
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(_CHUNK))
            if on_stderr is not None:
                on_stderr(decoder.decode(err[-1]))
            got = True
        return got

    while not (channel.eof_received or channel.closed):
        if not drain():
            # The channel's file number is readable when data, EOF or close arrived.
            select.select([channel], [], [], _left(deadline, timeout))
    drain()  # what came with the EOF
    return b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")


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
