"""RemoteSingularitySpawner: a JupyterHub spawner for Singularity on a chosen node.

One spawn: validate the user's options (options.py) against the node list
(nodes.py), then in a worker thread connect as the user over SSH and run
``start_singleuser.sh`` on the node (remote.py). The server's environment
travels on the SSH channel's stdin. ``poll`` and ``stop`` run
``check_pid.sh`` and ``stop.sh`` with the PID and start time kept in state.

While a start runs, each step (connecting, preparing the scripts, the
script's own ``@progress`` lines) becomes an event of ``progress()``, which
JupyterHub shows on the spawn page. The form shows each node's status
(``node_status.sh``), fetched in threads and cached for ``node_status_ttl``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import jinja2
from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Any, Bool, Callable, Float, Integer, List, Tuple, Unicode, Union, default, validate

from . import remote
from .nodes import Node, NodeStatus, parse_nodelist
from .options import (
    OptionsError,
    UserOptions,
    check_login_name,
    options_from_form,
    parse_binds,
    validate_user_options,
)

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6

    class SpawnException(web.HTTPError):
        """A spawn failure with a message for the user (JupyterHub 5 shape)."""

        def __init__(self, message, *, reason, status_code=400, **_):
            super().__init__(status_code, "%s", message, reason=reason)
            self.jupyterhub_message = message


STATE_VERSION = 1

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("remotesingularityspawner", "templates"),
    autoescape=True,
)

# Parsed node lists, by nodelist text: resolving names is slow and the
# result is the same for every user.
_node_cache: dict[str, list[Node]] = {}
_node_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_pool: remote.ConnectionPool | None = None
# Clean-ups that outlive the coroutine that started them (asyncio keeps only weak references).
_background_tasks: set[asyncio.Task] = set()
# Node status for the form, by (address, login): (monotonic time, status), and
# the fetches under way (a slow node is asked once, however many forms open).
_status_cache: dict[tuple[str, str], tuple[float, NodeStatus]] = {}
_status_fetches: dict[tuple[str, str], Future] = {}
_status_lock = threading.Lock()


def _get_executor(size: int) -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="rss-ssh")
    return _executor


def _get_pool(idle_timeout: float, keepalive: int) -> remote.ConnectionPool:
    """The SSH connections of this Hub process, shared by all spawners."""
    global _pool
    if _pool is None:
        _pool = remote.ConnectionPool(idle_timeout=idle_timeout, keepalive=keepalive)
    return _pool


@functools.lru_cache(maxsize=8)
def _load_bundle(directory: str) -> remote.ScriptBundle:
    """The scripts in *directory*, read once per Hub process (not on every poll)."""
    return remote.ScriptBundle.load(directory)


def _packaged_scripts_dir() -> str:
    installed = Path(__file__).with_name("scripts")
    if installed.is_dir():
        return str(installed)
    # A source checkout (editable install): the scripts live at the top level.
    return str(Path(__file__).resolve().parent.parent / "scripts")


def _store_status(key: tuple[str, str], fetch: Future) -> None:
    """Cache a finished status fetch (runs in the worker thread)."""
    error = fetch.exception()
    status = fetch.result() if error is None else NodeStatus(reachable=False, error=str(error))
    with _status_lock:
        _status_cache[key] = (time.monotonic(), status)
        _status_fetches.pop(key, None)


class _ProgressLog:
    """The progress events of one start, for any number of listeners (event loop only)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.changed = asyncio.Event()

    def add(self, percent: int, message: str) -> None:
        # Percentages only rise (a port retry reports "starting" again).
        if self.events:
            percent = max(percent, self.events[-1]["progress"])
        self.events.append({"progress": percent, "message": message})
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def _server_key(username: str, server_name: str) -> str:
    """A file-name-safe, collision-free directory name for one server."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", server_name or "default")[:40].lstrip(".") or "_"
    digest = hashlib.sha256(f"{username}\0{server_name}".encode()).hexdigest()[:10]
    return f"{slug}-{digest}"


class RemoteSingularitySpawner(Spawner):
    """Start single-user servers in Singularity/Apptainer on a node the user picks."""

    singularity_exe_path = Unicode(
        "singularity",
        help="""The singularity (or apptainer) executable on the nodes: a name found on the
        login PATH of the users on the node, or an absolute path.""",
    ).tag(config=True)

    singularity_container_path = Unicode(
        "",
        help="""Path of the container image (SIF file or sandbox directory) on the nodes.
        Every node must see it at this path (copy it or use a shared file system). Required.""",
    ).tag(config=True)

    singularity_args = List(
        Unicode(),
        help="""Extra options for `singularity exec`, e.g. ['--pid'].
        Use only flags your Singularity/Apptainer version knows.""",
    ).tag(config=True)

    gpu_nodes = List(
        Unicode(),
        help="""Names (as in nodelist) of the nodes that have GPUs. The form marks them, and a
        server started on one gets gpu_singularity_args.""",
    ).tag(config=True)

    gpu_singularity_args = List(
        Unicode(),
        default_value=["--nv"],
        help="""Extra options for `singularity exec` on the gpu_nodes, after singularity_args:
        ['--nv'] for NVIDIA GPUs, ['--rocm'] for AMD ones.""",
    ).tag(config=True)

    node_status_ttl = Float(
        30.0,
        help="""Seconds a node's status shown in the form (reachable, load, free memory,
        running servers) is reused before the node is asked again.""",
    ).tag(config=True)

    node_status_timeout = Float(
        5.0,
        help="""Seconds the form waits for a node's status. A node that has not answered by
        then is shown as unreachable and cannot be chosen.""",
    ).tag(config=True)

    nodelist = Unicode(
        "",
        help="""The compute nodes users may choose, comma separated. Each record is
        `name:ip`, `name:` (name resolved once by the Hub) or `:ip`. Example:
        'node1:10.0.0.11,node2:,:10.0.0.13'. Invalid records are dropped with a warning;
        the first valid record is the default node.""",
    ).tag(config=True)

    home_path = Unicode(
        "/home",
        help="""Where the users' home directories are, as seen by the Hub. The user's private
        key and known_hosts are read from {home_path}/{login name}/.ssh/.""",
    ).tag(config=True)

    default_bind_path = Unicode(
        "",
        help="""Paths bound into every container, ';' separated, each `src[:dest[:ro|rw]]`.
        Example: '/scratch;/software:/opt/software:ro'.""",
    ).tag(config=True)

    ssh_username = Union(
        [Unicode(), Callable()],
        default_value="{username}",
        help="""The login name on the nodes. A template with {username} (the Hub user's name)
        or a callable taking the spawner and returning the name.""",
    ).tag(config=True)

    ssh_key_files = List(
        Unicode(),
        default_value=["{home}/.ssh/id_ed25519", "{home}/.ssh/id_ecdsa", "{home}/.ssh/id_rsa"],
        help="""Candidate private keys of the user, first existing one is used. Templates with
        {home} ({home_path}/{login name}), {login} and {username}. The key must have no
        passphrase; any type paramiko loads (ed25519, ecdsa, rsa) works.""",
    ).tag(config=True)

    known_hosts_files = List(
        Unicode(),
        default_value=["/etc/ssh/ssh_known_hosts", "{home}/.ssh/known_hosts"],
        help="""known_hosts files the nodes' host keys are checked against (same templates as
        ssh_key_files). A node whose key is unknown or has changed is refused.""",
    ).tag(config=True)

    disable_host_key_checking = Bool(
        False,
        help="""Accept any host key (DANGEROUS: lets anyone who can impersonate a node receive
        the users' API tokens). For throwaway test setups only; every connection logs a
        warning.""",
    ).tag(config=True)

    ssh_port = Integer(22, help="The TCP port sshd listens on, the same on every node.").tag(config=True)

    ssh_connect_timeout = Float(
        10.0,
        help="Seconds to wait for a node's sshd to answer before the operation fails.",
    ).tag(config=True)

    ssh_idle_timeout = Float(
        120.0,
        help="""Seconds an SSH connection to a node, kept open per user and node for the next
        poll or stop, may stay unused before it is closed. Polls every poll_interval keep a
        running server's connection open; 0 closes each connection after use.""",
    ).tag(config=True)

    ssh_keepalive_interval = Integer(
        30,
        help="""Seconds between SSH keepalive messages on kept connections (0: none), so a
        node that vanished is noticed and firewalls do not drop an idle connection.""",
    ).tag(config=True)

    ssh_command_timeout = Float(
        30.0,
        help="""Seconds a node may take to answer a poll's check (on top of term_timeout and
        kill_timeout for a stop) before the node counts as unreachable, as when it went
        silent in the middle of the command. A healthy node answers in well under a second.""",
    ).tag(config=True)

    ssh_threads = Integer(
        32,
        help="""Worker threads for SSH operations (shared by all users). The Hub's event loop
        never waits on SSH; this bounds how many run at once.""",
    ).tag(config=True)

    remote_state_dir = Unicode(
        ".remote-singularity-spawner",
        help="""Directory on the node, relative to the user's home (or absolute), for the
        uploaded scripts (scripts/<version>/) and each server's log and pidfile
        (servers/<name>/). Created 0700.""",
    ).tag(config=True)

    scripts_dir = Unicode(
        "",
        help="""Directory holding start_singleuser.sh, check_pid.sh, stop.sh, node_status.sh and common.sh.
        Default: the copies shipped with this package. Point it at an edited copy to change
        what runs on the nodes; the scripts are read when first used (restart the Hub after
        editing them) and a changed script is uploaded as a new version.""",
    ).tag(config=True)

    node_scripts_dir = Unicode(
        "/opt/remote-singularity-spawner/scripts",
        help="""Node-wide directory of the scripts that `invoke deploy` installs, one
        subdirectory per scripts version. When this version is there and it, its parents and
        its files belong to root and are writable by nobody else, servers run the scripts from
        it and nothing is uploaded to the users' homes; otherwise the scripts are uploaded per
        user as usual. Empty: always upload per user.""",
    ).tag(config=True)

    port_range = Tuple(
        Integer(),
        Integer(),
        default_value=(49152, 60999),
        help="The range (low, high) the server's port is chosen from on the node.",
    ).tag(config=True)

    poll_grace_period = Float(
        300.0,
        help="""How long (seconds) a server whose node cannot be checked over SSH is still
        reported as running. When a poll cannot reach the node, the Hub first tries the
        server's own port: if the node answers that nothing listens there (connection
        refused: the node rebooted or crashed, the server is gone) the server is reported
        stopped at once; if the port accepts connections (only sshd is down or restarting)
        the server is reported running and no grace time is used up. Only when neither
        answers (timeouts, no route) does this grace period run: a short network outage
        then stops nobody's server; after it, the Hub considers the server gone.""",
    ).tag(config=True)

    term_timeout = Float(
        10.0,
        help="Seconds stop() waits after SIGTERM before it sends SIGKILL.",
    ).tag(config=True)

    kill_timeout = Float(
        5.0,
        help="Seconds stop() waits after SIGKILL for the server's processes to go.",
    ).tag(config=True)

    @default("env_keep")
    def _env_keep_default(self):
        # The Hub host's PATH, VIRTUAL_ENV, ... mean nothing on a node.
        return ["LANG", "LC_ALL", "JUPYTERHUB_SINGLEUSER_APP"]

    @default("options_form")
    def _options_form_default(self):
        return _render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return options_from_form

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return _apply_user_options

    @validate("port_range")
    def _validate_port_range(self, proposal):
        low, high = proposal["value"]
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"port_range {low}-{high} must lie within 1024-65535")
        return proposal["value"]

    # --- state ---------------------------------------------------------------

    node = Unicode("")
    address = Unicode("")
    pid = Integer(0)
    start_time = Integer(0)
    scripts_version = Unicode("")
    log_path = Unicode("")
    login = Unicode("")
    # internal_ssl: the directory on the node holding the server's key, certificate and CA.
    certs_dir = Unicode("")

    _state_fields = (
        "node", "address", "port", "pid", "start_time", "scripts_version", "log_path", "login",
        "certs_dir",
    )  # fmt: skip

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update({name: getattr(self, name) for name in self._state_fields})
            state["version"] = STATE_VERSION
        return state

    def load_state(self, state):
        super().load_state(state)
        if state.get("pid"):
            for name in self._state_fields:
                if name in state:
                    setattr(self, name, state[name])

    def clear_state(self):
        super().clear_state()
        for name in self._state_fields:
            setattr(self, name, self.trait_defaults(name))
        self._unreachable_since = None
        self._new_progress_log()

    # --- helpers ---------------------------------------------------------------

    _unreachable_since: float | None = None
    _starting = False
    # The start_singleuser.sh call in flight and its target, while start() waits for it;
    # stop() takes it (sets None) to stop what it starts.
    _pending_start: tuple[asyncio.Future, remote.Target] | None = None
    # internal_ssl: (hub-side paths, contents) read by create_certs for move_certs.
    _new_certs: tuple[dict, dict[str, bytes]] | None = None
    _progress_log = Any(None, allow_none=True)

    async def _in_thread(self, func, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_get_executor(self.ssh_threads), partial(func, *args))

    async def get_nodes(self) -> list[Node]:
        """The valid nodes, parsed (and names resolved) once per node list."""
        return await self._in_thread(self._parse_nodes, self.nodelist)

    def _parse_nodes(self, text: str) -> list[Node]:
        with _node_lock:
            if text not in _node_cache:
                nodes, warnings = parse_nodelist(text)
                for warning in warnings:
                    self.log.warning("RemoteSingularitySpawner: %s", warning)
                if not nodes:
                    self.log.error(
                        "RemoteSingularitySpawner: no valid node in nodelist %r: nobody can start a server",
                        text,
                    )
                _node_cache[text] = nodes
            return _node_cache[text]

    def _login_name(self) -> str:
        if callable(self.ssh_username):
            name = self.ssh_username(self)
        else:
            name = self.ssh_username.format(username=self.user.name)
        return check_login_name(name)

    def _target(self, address: str, login: str) -> remote.Target:
        home = os.path.join(self.home_path, login)
        fmt = {"home": home, "login": login, "username": self.user.name}
        if self.disable_host_key_checking:
            self.log.warning(
                "RemoteSingularitySpawner: host key checking is disabled "
                "(c.RemoteSingularitySpawner.disable_host_key_checking): connections to %s are "
                "not protected against impersonation",
                address,
            )
        return remote.Target(
            host=address,
            username=login,
            key_files=tuple(p.format(**fmt) for p in self.ssh_key_files),
            known_hosts_files=tuple(p.format(**fmt) for p in self.known_hosts_files),
            port=self.ssh_port,
            connect_timeout=self.ssh_connect_timeout,
            verify_host_key=not self.disable_host_key_checking,
        )

    def _scripts_dir(self) -> str:
        return self.scripts_dir or _packaged_scripts_dir()

    def _server_dir(self) -> str:
        return f"{self.remote_state_dir}/servers/{_server_key(self.user.name, self.name)}"

    def _run_script(self, target, script, args, stdin="", on_progress=None) -> remote.Reply:
        """Blocking: connect, make sure the scripts are there, run one of them.

        *on_progress(percent, message)*, if given, hears of each step (from this thread).
        """
        # A start is bounded by its own --timeout and the Hub's start_timeout.
        timeout = {
            "check_pid.sh": self.ssh_command_timeout,
            "node_status.sh": self.node_status_timeout,
            "stop.sh": self.term_timeout + self.kill_timeout + self.ssh_command_timeout,
        }.get(script)
        with self._session(target) as session:
            if on_progress is not None:
                on_progress(25, f"connected; preparing the scripts on {self._progress_node}")
            reply = session.run(script, args, stdin, timeout=timeout, on_progress=on_progress)
        reply.data.setdefault("scripts_version", session.bundle.version)
        return reply

    def _fail(self, message: str, reason: str) -> SpawnException:
        self.log.error("Spawn of %s failed: %s", self._log_name, message)
        return SpawnException(message, reason=reason)

    # --- node status for the form ---------------------------------------------------

    def _status_key(self, node: Node) -> tuple[str, str] | None:
        try:
            return (node.address, self._login_name())
        except OptionsError:
            return None

    def _cached_status(self, node: Node) -> NodeStatus | None:
        """The node's status as the form showed it, if still fresh."""
        key = self._status_key(node)
        with _status_lock:
            cached = _status_cache.get(key)
        if cached is None or time.monotonic() - cached[0] > self.node_status_ttl:
            return None
        return cached[1]

    async def node_statuses(self, nodes: list[Node]) -> list[NodeStatus | None]:
        """Each node's status (None: unknown), asked concurrently in threads.

        A node that does not answer within node_status_timeout is shown as
        unreachable; its answer, when it comes, is cached for the next form.
        """
        return list(await asyncio.gather(*(self._node_status(node) for node in nodes)))

    async def _node_status(self, node: Node) -> NodeStatus | None:
        cached = self._cached_status(node)
        if cached is not None:
            return cached
        key = self._status_key(node)
        if key is None:
            return None  # a bad login name: start() says why
        with _status_lock:
            fetch = _status_fetches.get(key)
            new = fetch is None
            if new:
                fetch = _get_executor(self.ssh_threads).submit(self._fetch_status, node, key[1])
                _status_fetches[key] = fetch
        if new:
            # Outside the lock: a fetch already done runs the callback right here.
            fetch.add_done_callback(partial(_store_status, key))
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(fetch)), self.node_status_timeout
            )
        except asyncio.TimeoutError:
            status = NodeStatus(reachable=False, error=f"no answer within {self.node_status_timeout:g} s")
            with _status_lock:
                # Refused as the form showed it, until the late answer replaces this.
                if not fetch.done():
                    _status_cache[key] = (time.monotonic(), status)
            return status

    def _fetch_status(self, node: Node, login: str) -> NodeStatus:
        """Blocking: run node_status.sh on *node* as *login*."""
        target = self._target(node.address, login)
        target = dataclasses.replace(
            target, connect_timeout=min(target.connect_timeout, self.node_status_timeout)
        )
        try:
            reply = self._run_script(target, "node_status.sh", [])
        except remote.RemoteError as e:
            self.log.warning("Node %s is unreachable for %s: %s", node.label, login, e)
            return NodeStatus(reachable=False, error=str(e))
        if reply.exit_code != remote.ExitCode.OK:
            self.log.warning(
                "node_status.sh failed on %s (exit code %d): %s", node.label, reply.exit_code, reply.stderr
            )
            return NodeStatus(reachable=True)
        return NodeStatus.from_reply(reply.data)

    # --- progress ------------------------------------------------------------------

    _progress_node = ""

    def _new_progress_log(self) -> _ProgressLog:
        old, self._progress_log = self._progress_log, _ProgressLog()
        if old is not None:
            old.wake()  # its listeners move on to the new log
        return self._progress_log

    def _report(self, percent: int, message: str) -> None:
        """Add a progress event (event loop only)."""
        if self._progress_log is None:
            self._new_progress_log()
        self.log.debug("Progress of %s: %d%% %s", self._log_name, percent, message)
        self._progress_log.add(percent, message)

    def _reporter_for_threads(self):
        """A callback for worker threads that hands each step to the event loop."""
        loop = asyncio.get_running_loop()

        def report(percent: int, message: str) -> None:
            loop.call_soon_threadsafe(self._report, percent, message)

        return report

    async def progress(self):
        """The steps of the start under way, as JupyterHub's progress events.

        Replays the steps so far to a late listener (the spawn page opens
        after the start began); JupyterHub ends the stream when the spawn
        is over and adds the final event itself (ready, or failed with the
        reason).
        """
        log, seen = None, 0
        while True:
            if self._progress_log is None:
                self._new_progress_log()
            if self._progress_log is not log:
                log, seen = self._progress_log, 0
            if seen < len(log.events):
                # One at a time: more may arrive while the listener has this one.
                seen += 1
                yield dict(log.events[seen - 1])
                continue
            await log.changed.wait()

    # --- the spawner API ---------------------------------------------------------

    async def start(self):
        self._starting = True
        if self._progress_log is None or self._progress_log.events:
            self._new_progress_log()
        try:
            return await self._start()
        except Exception:
            # A server that did not start needs no certificates (the Hub
            # calls stop() only for a server that poll() says is running).
            await self._remove_certs(*self._certs_location())
            raise
        finally:
            self._starting = False
            self._pending_start = None

    async def usable_nodes(self) -> list[Node]:
        """The valid nodes; SpawnException if there is none."""
        nodes = await self.get_nodes()
        if not nodes:
            raise self._fail(
                "No compute node is available: c.RemoteSingularitySpawner.nodelist has no valid "
                "entry. Please tell your administrator.",
                reason="config",
            )
        return nodes

    async def check_options(self, user_options) -> tuple[Node, UserOptions]:
        """Validate *user_options* against the node list; raise SpawnException if bad.

        Runs as JupyterHub's ``apply_user_options`` hook (5.3+), so a bad value
        is refused before the spawn begins, and again in ``start()``.
        """
        nodes = await self.usable_nodes()
        try:
            options = validate_user_options(user_options, [n.label for n in nodes])
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None
        node = next(n for n in nodes if n.label == options.host)
        status = self._cached_status(node)
        if status is not None and not status.reachable:
            others = [n.label for n in nodes if n is not node]
            raise self._fail(
                f"Cannot start your server: node {node.label} is unreachable ({status.error})."
                + (f" Please choose another node ({', '.join(others)})." if others else ""),
                reason="unreachable",
            )
        return node, options

    async def _start(self):
        if not self.singularity_container_path:
            raise self._fail(
                "the Hub is not configured: c.RemoteSingularitySpawner.singularity_container_path is empty",
                reason="config",
            )
        node, options = await self.check_options(self.user_options)
        try:
            login = self._login_name()
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None
        try:
            default_binds = parse_binds(self.default_bind_path)
        except OptionsError as e:
            raise self._fail(
                f"the Hub is misconfigured: c.RemoteSingularitySpawner.default_bind_path: {e}",
                reason="config",
            ) from None

        self.ip, self.port = node.address, 0
        try:
            env = remote.env_payload(self.get_env())
        except ValueError as e:
            raise self._fail(f"the Hub is misconfigured: {e}", reason="config") from None
        timeout = max(5, int(self.start_timeout - self.ssh_connect_timeout - 5))
        gpu_args = self.gpu_singularity_args if node.label in self.gpu_nodes else []
        args = [
            "--exe", self.singularity_exe_path,
            "--image", self.singularity_container_path,
            "--server-dir", self._server_dir(),
            "--port-range", "{}-{}".format(*self.port_range),
            "--timeout", str(timeout),
        ]
        for extra in [*self.singularity_args, *gpu_args]:
            args += ["--singularity-arg", extra]
        for bind in default_binds + options.binds:
            args += ["--bind", bind.spec]
        args += ["--", *self.cmd, *self.get_args()]

        target = self._target(node.address, login)
        self.log.info("Starting %s on %s (%s) as %s", self._log_name, node.label, node.address, login)
        self._progress_node = node.label
        self._report(10, f"connecting to {node.label} as {login}")
        future = asyncio.ensure_future(
            self._in_thread(
                self._run_script, target, "start_singleuser.sh", args, env, self._reporter_for_threads()
            )
        )
        self._pending_start = (future, target)
        try:
            reply = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The Hub gave up (start_timeout): do not leave a server behind.
            task = asyncio.ensure_future(self._stop_late_start(future, target))
            _background_tasks.add(task)
            task.add_done_callback(_background_tasks.discard)
            raise
        except remote.RemoteError as e:
            raise self._fail(f"Cannot start your server on {node.label}: {e}", reason="ssh") from None
        if self._pending_start is None:
            raise self._fail(f"Your server on {node.label} was stopped while it started", reason="stopped")

        if reply.exit_code != remote.ExitCode.OK:
            raise self._fail(
                f"Your server on {node.label} did not start (exit code {reply.exit_code}):\n{reply.stderr}",
                reason="start",
            )
        try:
            pid, start_time, port = (int(reply.data[k]) for k in ("pid", "start_time", "port"))
        except (KeyError, TypeError, ValueError):
            raise self._fail(
                f"unexpected reply from start_singleuser.sh on {node.label}: {reply.data!r}",
                reason="protocol",
            ) from None
        self.pid, self.start_time, self.port = pid, start_time, port
        self.log_path = str(reply.data.get("log", ""))
        self.node, self.address, self.login = node.label, node.address, login
        self.scripts_version = reply.data["scripts_version"]
        self._unreachable_since = None
        self._report(90, f"the server is up on {node.label}; waiting for it to answer the Hub")
        self.log.info(
            "Started %s on %s: pid %d, port %d, log %s",
            self._log_name, node.label, self.pid, self.port, self.log_path,
        )
        return (node.address, self.port)

    async def _stop_late_start(self, future, target):
        # The Hub clears the state before this is done: remember where the certificates are.
        certs = self._certs_location()
        try:
            reply = await future
            pid, start_time = reply.data.get("pid"), reply.data.get("start_time")
            if reply.exit_code == remote.ExitCode.OK and pid:
                self.log.warning(
                    "Stopping %s: it finished starting after the Hub gave up on it or stopped it",
                    self._log_name,
                )
                await self._in_thread(
                    self._run_script, target, "stop.sh", self._stop_args(pid, start_time)
                )
        except remote.RemoteError as e:
            self.log.error("Could not clean up the late start of %s: %s", self._log_name, e)
        await self._remove_certs(*certs)

    def _stop_args(self, pid, start_time) -> list[str]:
        return [
            "--pid", str(pid),
            "--start-time", str(start_time),
            "--server-dir", self._server_dir(),
            "--term-timeout", str(int(self.term_timeout)),
            "--kill-timeout", str(int(self.kill_timeout)),
        ]

    async def poll(self):
        if self._starting:
            return None
        if not self.pid:
            return 0
        target = self._target(self.address, self.login)
        args = ["--pid", str(self.pid), "--start-time", str(self.start_time)]
        try:
            reply = await self._in_thread(self._run_script, target, "check_pid.sh", args)
        except remote.RemoteError as e:
            return await self._unreachable(e)
        if reply.exit_code == remote.ExitCode.OK:
            self._unreachable_since = None
            return None
        if reply.exit_code == remote.ExitCode.NOT_RUNNING:
            self.log.info("%s on %s is no longer running", self._log_name, self.node)
            # The Hub calls stop() only for a running server: clean up here.
            await self._remove_certs(*self._certs_location())
            return 0
        return await self._unreachable(
            remote.RemoteError(f"check_pid.sh failed (exit code {reply.exit_code}): {reply.stderr}")
        )

    async def _unreachable(self, error: Exception):
        """Poll could not ask the node: ask the server's port, else wait out poll_grace_period."""
        listening = None
        if self.port:
            listening = await self._in_thread(
                remote.probe_port, self.address, self.port, self.ssh_connect_timeout
            )
        if listening is False:
            self.log.warning(
                "Cannot check %s on %s (%s) and %s:%d refuses connections: the server is gone",
                self._log_name, self.node, error, self.address, self.port,
            )
            return 1
        if listening:
            self.log.warning(
                "Cannot check %s on %s (%s) but its port %d accepts connections: still running",
                self._log_name, self.node, error, self.port,
            )
            self._unreachable_since = None
            return None
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        waited = now - self._unreachable_since
        if waited < self.poll_grace_period:
            self.log.warning(
                "Cannot check %s on %s (%s); still reported running (%.0fs of %.0fs grace)",
                self._log_name, self.node, error, waited, self.poll_grace_period,
            )
            return None
        self.log.error(
            "Cannot check %s on %s for %.0fs (%s): considering it stopped",
            self._log_name, self.node, waited, error,
        )
        return 1

    async def stop(self, now=False):
        if not self.pid:
            if self._pending_start is not None:
                # Still starting on the node (the Hub shuts down with cleanup_servers):
                # wait for it and stop what it started, or it would be left running.
                future, target = self._pending_start
                self._pending_start = None
                self.log.info("Stopping %s once its start on the node returns", self._log_name)
                await self._stop_late_start(future, target)
            return
        target = self._target(self.address, self.login)
        try:
            reply = await self._in_thread(
                self._run_script, target, "stop.sh", self._stop_args(self.pid, self.start_time)
            )
        except remote.RemoteError as e:
            self.log.error(
                "Cannot stop %s (pid %d on %s): %s. It may still be running there.",
                self._log_name, self.pid, self.node, e,
            )
            return
        if reply.exit_code != remote.ExitCode.OK:
            raise RuntimeError(
                f"stop.sh failed for {self._log_name} on {self.node} "
                f"(exit code {reply.exit_code}): {reply.stderr}"
            )
        self.log.info(
            "Stopped %s on %s (%s)", self._log_name, self.node, reply.data.get("signal", "?")
        )
        self.pid = 0
        await self._remove_certs(*self._certs_location())

    # --- internal_ssl ------------------------------------------------------------

    async def create_certs(self):
        """Create the server's certificate, naming the chosen node too.

        JupyterHub calls this (with ``c.JupyterHub.internal_ssl``) after the
        user's options are applied and before ``start()``: the node is already
        chosen, and the Hub and the proxy will check the certificate against
        the node's address.
        """
        node, _ = await self.check_options(self.user_options)
        configured = self.ssl_alt_names
        names = configured(self) if callable(configured) else configured
        if inspect.isawaitable(names):
            names = await names
        self.ssl_alt_names = [*names, *node_alt_names(node)]
        try:
            paths = await super().create_certs()
        finally:
            self.ssl_alt_names = configured
        # Read them now: the Hub writes every server of a user to the same
        # files, and another spawn of this user may rewrite them before
        # move_certs runs. (Three small local files, as the Hub just wrote.)
        self._new_certs = (paths, _read_cert_files(paths))
        return paths

    async def move_certs(self, paths):
        """Copy the key, certificate and CA to the node; return their paths there.

        They go to ``<server dir>/certs/`` under the user's home (0600 files
        in a 0700 directory) and are removed when the server stops or fails
        to start.
        """
        if self._new_certs is not None and self._new_certs[0] == paths:
            files = self._new_certs[1]
        else:
            files = await self._in_thread(_read_cert_files, paths)
        self._new_certs = None
        node, _ = await self.check_options(self.user_options)
        try:
            login = self._login_name()
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None
        target = self._target(node.address, login)
        try:
            certs_dir = await self._in_thread(self._put_certs, target, f"{self._server_dir()}/certs", files)
        except remote.RemoteError as e:
            raise self._fail(f"Cannot copy the TLS certificates to {node.label}: {e}", reason="ssh") from None
        # Where stop() and a failed start find them (start() sets the same node again).
        self.node, self.address, self.login, self.certs_dir = node.label, node.address, login, certs_dir
        return {key: f"{self.certs_dir}/{name}" for key, name in CERT_FILES.items()}

    def _certs_location(self) -> tuple[remote.Target | None, str]:
        if not (self.certs_dir and self.address and self.login):
            return None, ""
        return self._target(self.address, self.login), self.certs_dir

    async def _remove_certs(self, target: remote.Target | None, certs_dir: str) -> None:
        if target is None or not certs_dir:
            return
        try:
            await self._in_thread(self._drop_certs, target, certs_dir)
        except remote.RemoteError as e:
            self.log.warning(
                "Could not remove the TLS certificates of %s (%s:%s): %s",
                self._log_name,
                target.host,
                certs_dir,
                e,
            )
            return
        if self.certs_dir == certs_dir:
            self.certs_dir = ""

    def _session(self, target: remote.Target) -> remote.NodeSession:
        bundle = _load_bundle(self._scripts_dir())
        pool = _get_pool(self.ssh_idle_timeout, self.ssh_keepalive_interval)
        return remote.NodeSession(
            target, bundle, self.remote_state_dir, self.log, pool, node_dir=self.node_scripts_dir
        )

    def _put_certs(self, target: remote.Target, certs_dir: str, files: dict[str, bytes]) -> str:
        """Blocking: upload the certificate files; their absolute directory on the node."""
        with self._session(target) as session:
            return session.put_private(certs_dir, files)

    def _drop_certs(self, target: remote.Target, certs_dir: str) -> None:
        with self._session(target) as session:
            session.remove_private(certs_dir)


# internal_ssl: the key of cert_paths -> the file's name on the node.
CERT_FILES = {"keyfile": "server.key", "certfile": "server.crt", "cafile": "ca.crt"}


def _read_cert_files(paths: dict) -> dict[str, bytes]:
    return {name: Path(paths[key]).read_bytes() for key, name in CERT_FILES.items()}


def node_alt_names(node: Node) -> list[str]:
    """The subjectAltName entries naming *node*: its address, and its name if it has one."""
    names = [f"IP:{node.address}"]
    if node.label != node.address:
        names.append(f"DNS:{node.label}")
    return names


async def _apply_user_options(spawner: RemoteSingularitySpawner, user_options) -> None:
    await spawner.check_options(user_options)


async def _render_options_form(spawner: RemoteSingularitySpawner) -> str:
    nodes = await spawner.usable_nodes()
    statuses = await spawner.node_statuses(nodes)
    return render_form(nodes, statuses, spawner.gpu_nodes, spawner.default_bind_path)


def render_form(nodes: list[Node], statuses: list[NodeStatus | None], gpu_nodes, default_binds: str) -> str:
    """The options form: one choice per node with its status; unreachable ones disabled."""
    choices = []
    for node, status in zip(nodes, statuses, strict=True):
        choices.append(
            {
                "node": node,
                "gpu": node.label in gpu_nodes,
                "status": status.summary() if status is not None else "",
                "disabled": status is not None and not status.reachable,
            }
        )
    selected = next((c for c in choices if not c["disabled"]), None)
    return _templates.get_template("options_form.html").render(
        choices=choices,
        selected=selected,
        any_gpu=any(c["gpu"] for c in choices),
        default_binds=default_binds,
    )
