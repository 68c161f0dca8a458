"""The one fake SSH of the unit tests: nodes that answer the scripts as Python handlers.

:class:`FakeSSH` is what the shared connection pools open connections with
(``HubResources(opener=...)``, set by the ``fake_ssh`` fixture in conftest.py),
so the spawner runs exactly as on a cluster down to the command line sent,
and each command is decoded back into (script, args, stdin) for a handler.
``put_files.sh`` (scripts, certificates) is answered by the node itself,
which keeps the files it was sent, unless a handler is set for it.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from remotesingularityspawner import remote
from remotesingularityspawner.remote import protocol

Handler = Callable[[list[str], str], "remote.Reply | tuple"]


@dataclass
class Run:
    """One command a node received."""

    login: str
    script: str
    args: list[str]
    stdin: str
    timeout: float | None
    directory: str = ""  # where the script ran from ("" for one fed on stdin)


def reply(code=0, stderr="", **data) -> remote.Reply:
    return remote.Reply(exit_code=int(code), data=data, stderr=stderr)


def _decode_files(payload: str) -> dict[str, str]:
    parts = payload.split("\0")
    return dict(zip(parts[0:-1:2], parts[1::2], strict=False))


class FakeNode:
    """A node: answers each script with its handler, keeps what put_files.sh was sent."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.handlers: dict[str, Handler] = {}
        self.runs: list[Run] = []
        self.dirs: dict[str, dict[str, str]] = {}  # directory -> files, as put_files.sh left them
        self.node_wide: set[str] = set()  # node-wide script directories that are installed and safe
        self.lock = threading.Lock()

    def on(self, script: str, handler: Handler | remote.Reply) -> None:
        """Answer *script* with *handler(args, stdin)*, or always with one reply."""
        self.handlers[script] = handler if callable(handler) else (lambda args, stdin: handler)

    def scripts_run(self) -> list[str]:
        return [r.script for r in self.runs if r.script != "put_files.sh"]

    def answer(self, login: str, argv: list[str], stdin: str, timeout) -> remote.Reply:
        assert argv[:3] == ["bash", "-c", protocol.LAUNCHER] and argv[3] == "rss", argv
        if argv[4] == "-s":
            script_text, _, payload = stdin.partition('main "$@"; exit\n')
            script = "put_files.sh" if "put_files.sh" in script_text else "check_node.sh"
            run = Run(login, script, argv[6:], payload, timeout)
        else:
            directory, _, script = argv[4].rpartition("/")
            run = Run(login, script, argv[5:], stdin, timeout, directory)
        with self.lock:
            self.runs.append(run)
        if run.script == "put_files.sh" and "put_files.sh" not in self.handlers:
            return self._put_files(run)
        if run.directory not in self.dirs and run.directory not in self.node_wide:
            return reply(remote.ExitCode.NO_SCRIPTS)
        handler = self.handlers.get(run.script)
        if handler is None:
            raise AssertionError(f"{self.host}: no handler for {run.script} {run.args}")
        answer = handler(run.args, run.stdin)
        return answer if isinstance(answer, remote.Reply) else reply(*answer)

    def _put_files(self, run: Run) -> remote.Reply:
        action, args = run.args[0], run.args[1:]
        opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        files = _decode_files(run.stdin)
        if action == "scripts":
            if opt.get("--node-dir") in self.node_wide:
                return reply(dir=opt["--node-dir"], written=False)
            user_dir = opt["--user-dir"]
            if user_dir in self.dirs:
                return reply(dir=user_dir, written=False)
            if "--payload" not in args:
                return reply(remote.ExitCode.NO_SCRIPTS, missing=True)
            self.dirs[user_dir] = files
            return reply(dir=user_dir, written=True)
        # As put_files.sh, which runs in the home: a relative --dir is under it.
        where = opt.get("--dir", "")
        where = where if where.startswith("/") else f"/home/{run.login}/{where}"
        if action == "put":
            self.dirs[where] = files
            return reply(dir=where)
        if action == "remove":
            self.dirs.pop(where, None)
            return reply(removed=True)
        raise AssertionError(f"put_files.sh {run.args}")


class FakeChannel:
    """Stands in for paramiko's Channel as remote.ssh.run_command uses it.

    The node answers once the command's input is complete: at the EOF sent
    after stdin, or at once for a command sent none.
    """

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.command = ""
        self.stdin = b""
        self.eof_sent = False
        self.timeout: float | None = None
        self.closed = False
        self.exit_status = -1
        self.status_event = threading.Event()
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._answered = False

    def settimeout(self, timeout):
        self.timeout = timeout

    def exec_command(self, command):
        self.command = command

    def sendall(self, data):
        self.stdin += data

    def shutdown_write(self):
        self.eof_sent = True

    @property
    def eof_received(self) -> bool:
        if not self._answered:
            self._answered = True
            self._answer()
        return True

    def _answer(self) -> None:
        conn = self.conn
        stdin = self.stdin.decode() if self.eof_sent else False
        conn.stdins.append(stdin)
        node = conn.ssh.node(conn.host)
        answer = node.answer(conn.target.username, shlex.split(self.command), stdin or "", self.timeout)
        # stderr arrives a line at a time, stdout in one piece.
        self._err = [line.encode() for line in answer.stderr.splitlines(keepends=True)]
        self._out = [] if not answer.data else [(json.dumps(answer.data) + "\n").encode()]
        self.exit_status = answer.exit_code
        self.status_event.set()

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv(self, size):
        return self._out.pop(0)

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv_stderr(self, size):
        return self._err.pop(0)

    def close(self):
        self.closed = True


class FakeConnection:
    """Stands in for fabric.Connection: hands each command to its node; can break."""

    def __init__(self, ssh: FakeSSH, target: remote.Target) -> None:
        self.ssh = ssh
        self.host = target.host
        self.target = target
        self.alive = True
        self.closed = False
        self.stdins: list = []  # each command's input: its text, or False (none, no EOF)
        self.transport = SimpleNamespace(
            is_active=lambda: self.alive, set_keepalive=lambda seconds: setattr(self, "keepalive", seconds)
        )
        self.keepalive = None
        self.fail_with: BaseException | None = None  # raised by the next commands

    def create_session(self) -> FakeChannel:
        if not self.alive:
            raise EOFError("connection closed by peer")
        if self.fail_with is not None:
            raise self.fail_with
        return FakeChannel(self)

    def close(self):
        self.closed = True
        self.alive = False


@dataclass
class FakeSSH:
    """Opens connections to :class:`FakeNode`s; a host in *refuse* raises instead."""

    nodes: dict[str, FakeNode] = field(default_factory=dict)
    connections: list[FakeConnection] = field(default_factory=list)
    refuse: dict[str, BaseException] = field(default_factory=dict)
    delay: float = 0.0  # seconds each login takes (lets threads race)
    certificates: list = field(default_factory=list)  # the keys certificate logins used
    lock: threading.Lock = field(default_factory=threading.Lock)

    def node(self, host: str) -> FakeNode:
        with self.lock:
            return self.nodes.setdefault(host, FakeNode(host))

    def __call__(self, target: remote.Target, log, caches=None) -> FakeConnection:
        if self.delay:
            time.sleep(self.delay)
        if target.certificate is not None:
            # As remote.ssh.connect: the login's key and certificate are made first.
            key = target.certificate.login_key(log, caches.authorities if caches else None)
            with self.lock:
                self.certificates.append(key)
        if target.host in self.refuse:
            raise self.refuse[target.host]
        conn = FakeConnection(self, target)
        with self.lock:
            self.connections.append(conn)
        return conn

    def runs(self, script: str | None = None) -> list[Run]:
        """Every command any node received (of *script*), in order per node."""
        return [r for n in self.nodes.values() for r in n.runs if script is None or r.script == script]
