"""RemoteSingularitySpawner: the Hub's side of one server, from the form to the node.

One spawn, in the order it happens:

1. the form (form.py) shows the nodes of ``nodelist`` (nodes.py) with their
   status (status.py), asked in worker threads;
2. ``check_options`` (form.py) validates the user's choice (options.py)
   before any connection, also as JupyterHub's ``apply_user_options`` hook;
3. ``start`` builds the ``start_singleuser.sh`` call (calls.py: argv and the
   environment for stdin) and runs it in a worker thread over SSH as the user
   (remote/), relaying its steps to the spawn page (progress.py);
4. ``poll`` and ``stop`` run ``check_pid.sh`` and ``stop.sh`` with what the
   state keeps (state.py); with internal_ssl the certificates go to the node
   first (certs.py).

With ``placement = "slurm"`` (slurm.py) the user picks a partition and
resources instead of a node; ``start`` first submits a job that holds the
allocation and waits for its node, then starts the server there as a step of
the job; poll, stop and a failed start also end the job.

Threads, SSH connections and caches are shared by all spawners of the Hub
(resources.py). This class gathers the values and orchestrates; it builds no
command line and holds no socket.
"""

from __future__ import annotations

import asyncio
import time

from jupyterhub.spawner import Spawner
from traitlets import (
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Integer,
    List,
    Tuple,
    Unicode,
    Union,
    default,
    validate,
)

from . import calls, remote
from . import progress as progress_mod
from .access import NodeAccess
from .certs import InternalTLS
from .form import NodeChoice, apply_user_options, options_from_form, render_options_form
from .options import OptionsError, parse_binds
from .resources import in_background
from .slurm import SlurmPlacement
from .state import KeptState


def _start_on_node(session: remote.NodeSession, call: remote.ScriptCall, label: str, report):
    """Blocking: run start_singleuser.sh; its reply and the scripts' version."""
    report(25, f"connected; preparing the scripts on {label}")
    return session.call(call, on_progress=report), session.version


class RemoteSingularitySpawner(KeptState, SlurmPlacement, NodeAccess, NodeChoice, InternalTLS, Spawner):
    """Start single-user servers in Singularity/Apptainer on a node the user picks
    (placement "ssh") or that Slurm allocates (placement "slurm")."""

    placement = Enum(
        ["ssh", "slurm"],
        default_value="ssh",
        help="""How the node is chosen. "ssh": the user picks one of nodelist and the server
        is started there over SSH. "slurm": the user picks a partition and resources
        (cores, memory, GPUs, time limit); a job submitted as the user on
        slurm_submit_host holds the allocation, and the server runs as a step of that job
        (`srun --overlap`) on the node Slurm allocated, started over SSH as with "ssh".
        The job is cancelled when the server stops. Raise start_timeout to what users may
        wait in the queue.""",
    ).tag(config=True)

    slurm_submit_host = Unicode(
        "",
        help="""placement slurm: where users run sbatch, squeue, scancel and sinfo over SSH (a
        login node), as a nodelist record `name:ip` or `name:`. Default: the first valid node
        of nodelist.""",
    ).tag(config=True)

    slurm_partitions = Union(
        [List(Unicode()), Dict()],
        default_value=[],
        help="""placement slurm: the partitions users may choose, a list of names or a dict of
        name -> limits, e.g. {"debug": {"cpus": 4, "memory": "8G", "gpus": 0, "time":
        "2:00:00"}, "gpu": {}}. Limits are upper bounds on what a user may ask for, on top of
        the partition's own (a node's CPUs and memory, its MaxTime). Empty: every partition
        sinfo shows the user.""",
    ).tag(config=True)

    slurm_default_resources = Dict(
        {"cpus": 1, "memory": "1G", "gpus": 0, "time": "1:00:00"},
        help="""placement slurm: what a job asks for when the user leaves a field empty: cpus,
        memory ("4G", "512M"), gpus and time ("H:MM:SS" or minutes). A default above a
        partition's limit is lowered to it.""",
    ).tag(config=True)

    slurm_sbatch_args = List(
        Unicode(),
        help="""placement slurm: extra sbatch options of the site, each one word `--name=value`,
        e.g. ['--account=jupyter', '--qos=interactive']. Options the spawner sets itself
        (partition, resources, time, job name, output) are refused.""",
    ).tag(config=True)

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

    ssh_auth = Enum(
        ["user-key", "certificate"],
        default_value="user-key",
        help="""How the Hub logs in to the nodes as the user. "user-key": with the user's own
        private key, read from their home (ssh_key_files; the Hub must be able to read it,
        so it runs as root). "certificate" (recommended): with a key made for each connection
        and a certificate signed by the Hub's CA (ssh_ca_key_file), valid for
        ssh_certificate_validity seconds; the Hub reads no home and holds no user's secret,
        and can run as an ordinary account. The nodes' sshd must trust the CA
        (`remote-singularity-spawner deploy`).""",
    ).tag(config=True)

    ssh_ca_key_file = Unicode(
        "",
        help="""certificate mode: the CA's private key (OpenSSH format; ed25519, ecdsa or rsa;
        no passphrase), readable by the Hub's account alone (mode 0600). Read again when
        the file changes. Its public key goes to the nodes' TrustedUserCAKeys.""",
    ).tag(config=True)

    ssh_certificate_validity = Integer(
        300,
        help="""certificate mode: seconds each login's certificate is valid (30 to 86400); it
        is also valid from a minute before it is made, for clock skew. sshd checks it at
        login only: a kept connection outlives it.""",
    ).tag(config=True)

    ssh_certificate_source_addresses = List(
        Unicode(),
        help="""certificate mode: the addresses (CIDR) the certificates may be used from, e.g.
        ['10.0.0.1/32'] for the Hub's address on the cluster network: the `source-address`
        critical option. Empty: any address.""",
    ).tag(config=True)

    ssh_key_files = List(
        Unicode(),
        default_value=["{home}/.ssh/id_ed25519", "{home}/.ssh/id_ecdsa", "{home}/.ssh/id_rsa"],
        help="""user-key mode: candidate private keys of the user, first existing one is used.
        Templates with {home} ({home_path}/{login name}), {login} and {username}. The key must
        have no passphrase; any type paramiko loads (ed25519, ecdsa, rsa) works.""",
    ).tag(config=True)

    known_hosts_files = List(
        Unicode(),
        default_value=["/etc/ssh/ssh_known_hosts", "{home}/.ssh/known_hosts"],
        help="""known_hosts files the nodes' host keys are checked against (same templates as
        ssh_key_files), in OpenSSH's format: comments, hashed names, [host]:port, wildcards.
        A node whose key is unknown, has changed or is marked @revoked is refused;
        @cert-authority lines are skipped with a warning (list the nodes' host keys too). In
        certificate mode no home is read: entries with {home} are skipped.""",
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
        help="""Directory holding the node scripts (start_singleuser.sh, check_pid.sh, stop.sh,
        node_status.sh, check_node.sh, put_files.sh, trust_ca.sh, slurm_job.sh and common.sh).
        Default: the copies shipped with this package. Point it at an edited copy to change
        what runs on the nodes; the scripts are read when first used (restart the Hub after
        editing them) and a changed script is uploaded as a new version.""",
    ).tag(config=True)

    node_scripts_dir = Unicode(
        remote.DEFAULT_NODE_SCRIPTS_DIR,
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
        help="""Seconds stop() waits after SIGTERM (to the server's process group, which the
        runtime forwards to the container) before it sends SIGKILL to the group and to every
        process the server started. A stop with now=True (the Hub's shutdown) does not wait.""",
    ).tag(config=True)

    kill_timeout = Float(
        5.0,
        help="""Seconds stop() waits after SIGKILL for the server's processes to go; a process
        still there after that fails the stop with its PID.""",
    ).tag(config=True)

    @default("env_keep")
    def _env_keep_default(self):
        # The Hub host's PATH, VIRTUAL_ENV, ... mean nothing on a node.
        return ["LANG", "LC_ALL", "JUPYTERHUB_SINGLEUSER_APP"]

    @default("options_form")
    def _options_form_default(self):
        return render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return options_from_form

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return apply_user_options

    @validate("port_range")
    def _validate_port_range(self, proposal):
        low, high = proposal["value"]
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"port_range {low}-{high} must lie within 1024-65535")
        return proposal["value"]

    # --- the server's state (see state.py) ---------------------------------------------

    node = Unicode("")
    address = Unicode("")
    pid = Integer(0)
    start_time = Integer(0)
    scripts_version = Unicode("")
    log_path = Unicode("")
    login = Unicode("")
    certs_dir = Unicode("")
    job_id = Unicode("")
    partition = Unicode("")

    # The clock of the poll grace period (tests set their own).
    clock = staticmethod(time.monotonic)
    _unreachable_since: float | None = None
    _starting = False
    # The start_singleuser.sh call in flight and its target, while start() waits for it;
    # stop() takes it (sets None) to stop what it starts.
    _pending_start: tuple[asyncio.Future, remote.Target] | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._steps = progress_mod.Progress()

    # --- start ---------------------------------------------------------------------------

    async def start(self):
        """Start the server on the chosen node; return its (address, port).

        Raises SpawnException with a sentence naming the node and the cause.
        """
        self._starting, self._start_began = True, self.clock()
        self._steps.restart()
        try:
            return await self._start()
        except Exception:
            # A server that did not start needs no certificates and no job (the Hub
            # calls stop() only for a server that poll() says is running).
            await self._release()
            raise
        finally:
            self._starting = False
            self._pending_start = None

    async def _start(self):
        if not self.singularity_container_path:
            raise self._fail(
                "the Hub is not configured: c.RemoteSingularitySpawner.singularity_container_path is empty",
                reason="config",
            )
        try:
            default_binds = parse_binds(self.default_bind_path)
        except OptionsError as e:
            raise self._fail(
                f"the Hub is misconfigured: c.RemoteSingularitySpawner.default_bind_path: {e}",
                reason="config",
            ) from None
        node, binds, job = await self._place()
        login = self._login()
        self.ip, self.port = node.address, 0
        gpu_args = self.gpu_singularity_args if node.label in self.gpu_nodes else []
        try:
            call = calls.start_call(
                exe=self.singularity_exe_path,
                image=self.singularity_container_path,
                server_dir=self._server_dir(),
                port_range=self.port_range,
                timeout=max(5, int(self._time_left() - self.ssh_connect_timeout - 5)),
                singularity_args=[*self.singularity_args, *gpu_args],
                binds=[*default_binds, *binds],
                command=[*self.cmd, *self.get_args()],
                env=self.get_env(),
                slurm_job=job,
            )
        except ValueError as e:
            raise self._fail(f"the Hub is misconfigured: {e}", reason="config") from None

        target = self._target(node.address, login)
        self.log.info("Starting %s on %s (%s) as %s", self._log_name, node.label, node.address, login)
        self._steps.report(10, f"connecting to {node.label} as {login}")
        future = asyncio.ensure_future(
            self._on_node(target, _start_on_node, call, node.label, self._steps.reporter())
        )
        self._pending_start = (future, target)
        try:
            reply, version = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The Hub gave up (start_timeout): do not leave a server behind.
            in_background(self._stop_late_start(future, target))
            raise
        except Exception as e:
            message = f"Cannot start your server on {node.label}: {self._explain(e)}"
            raise self._fail(message, reason="ssh") from None
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
        self.node, self.address, self.login, self.scripts_version = node.label, node.address, login, version
        self._unreachable_since = None
        self._steps.report(90, f"the server is up on {node.label}; waiting for it to answer the Hub")
        self.log.info(
            "Started %s on %s: pid %d, port %d, log %s",
            self._log_name,
            node.label,
            self.pid,
            self.port,
            self.log_path,
        )
        return (node.address, self.port)

    async def _stop_late_start(self, future, target):
        """Stop what a start the Hub gave up on (or stopped) started, once it returns."""
        # The Hub clears the state before this is done: remember the certificates and job.
        certs_location, job = self._certs_location(), (self.job_id, self.login)
        try:
            reply, _ = await future
            pid, start_time = reply.data.get("pid"), reply.data.get("start_time")
            if reply.exit_code == remote.ExitCode.OK and pid:
                self.log.warning(
                    "Stopping %s: it finished starting after the Hub gave up on it or stopped it",
                    self._log_name,
                )
                await self._on_node(target, remote.NodeSession.call, self._stop_call(pid, start_time))
        except Exception as e:  # noqa: BLE001 - a background clean-up logs whatever failed
            self.log.error("Could not clean up the late start of %s: %s", self._log_name, self._explain(e))
        await self._release(certs_location, job)

    def _stop_call(self, pid, start_time, now=False) -> remote.ScriptCall:
        return calls.stop_call(
            pid, start_time, self._server_dir(),
            self.term_timeout, self.kill_timeout, self.ssh_command_timeout, now,
        )  # fmt: skip

    # --- poll ----------------------------------------------------------------------------

    async def poll(self):
        """None while the server runs (or starts), else an exit status (0: not started)."""
        if self._starting:
            return None
        if not self.pid:
            return 0
        target = self._target(self.address, self.login)
        call = calls.check_call(self.pid, self.start_time, self.ssh_command_timeout)
        try:
            reply = await self._on_node(target, remote.NodeSession.call, call)
        except remote.CertificateSettingError:
            # Logged once, where the settings are read; not again at every poll.
            return await self._unreachable("the Hub's certificate settings are unusable (see its log)")
        except Exception as e:  # noqa: BLE001 - any failure to ask the node
            return await self._unreachable(self._explain(e))
        if reply.exit_code == remote.ExitCode.OK:
            self._unreachable_since = None
            return None
        if reply.exit_code == remote.ExitCode.NOT_RUNNING:
            self.log.info("%s on %s is no longer running", self._log_name, self.node)
            # The Hub calls stop() only for a running server: clean up here.
            await self._release()
            return 0
        return await self._unreachable(f"check_pid.sh failed (exit code {reply.exit_code}): {reply.stderr}")

    # --- stop ----------------------------------------------------------------------------

    async def stop(self, now=False):
        """Stop the server and what it started; return when it is gone.

        *now*: SIGKILL right after SIGTERM, without waiting term_timeout.
        """
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
        call = self._stop_call(self.pid, self.start_time, now)
        try:
            reply = await self._on_node(target, remote.NodeSession.call, call)
        except Exception as e:  # noqa: BLE001 - the Hub forgets the server either way
            self.log.error(
                "Cannot stop %s (pid %d on %s): %s. It may still be running there.",
                self._log_name,
                self.pid,
                self.node,
                self._explain(e),
            )
            if self.job_id:  # scancel ends the server wherever it runs
                await self._cancel_job(self.job_id, self.login)
            return
        if reply.exit_code != remote.ExitCode.OK:
            raise RuntimeError(
                f"stop.sh failed for {self._log_name} on {self.node} "
                f"(exit code {reply.exit_code}): {reply.stderr}"
            )
        self.log.info("Stopped %s on %s (%s)", self._log_name, self.node, reply.data.get("signal", "?"))
        self.pid = 0
        await self._release()

    # --- progress --------------------------------------------------------------------------

    async def progress(self):
        """The steps of the start under way, as JupyterHub's progress events.

        Replays the steps so far to a late listener (the spawn page opens
        after the start began); JupyterHub ends the stream when the spawn
        is over and adds the final event itself (ready, or failed with the
        reason).
        """
        async for event in self._steps.events():
            yield event
