"""RemoteSingularitySpawner: the Hub's side of one server, from the form to the node.

The spawner orchestrates; it holds its parts, each chosen once from the
configuration, and builds no command line and holds no socket:

- a placement (placement/: ``ssh``, the user picks a node; ``slurm``, a job
  allocates one) offers the form, validates the user's options once per spawn
  into a request, and places the server (a :class:`Placed` value: node,
  address, login, job);
- a login method (login.py: the user's key, or a certificate of the Hub's CA)
  gives the SSH layer its target; node_access.py runs the node scripts over
  it in worker threads (remote/), with what the Hub's spawners share
  (hub_resources.py);
- internal TLS (internal_tls.py) makes the server's certificate for the
  placed node and copies it there.

One spawn: ``apply_user_options`` validates the request; with internal_ssl,
``create_certs``/``move_certs`` make the certificate when the node is known
before the start; ``start`` places the server, starts ``start_singleuser.sh``
there (calls.py) and relays its steps (progress.py); ``poll`` and ``stop`` run
``check_pid.sh`` and ``stop.sh`` with what the state keeps (state.py), and a
server that ended releases its placement and certificate.
"""

from __future__ import annotations

import dataclasses
import time
from functools import cached_property

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
from . import state as state_mod
from .images import Image
from .internal_tls import CertsOnNode
from .login import LOGIN_METHODS
from .parts import Parts, make_parts
from .placement import (
    PLACEMENTS,
    Placed,
    apply_user_options,
    options_from_form,
    render_options_form,
)
from .placement.nodes import Node
from .placement.slurm_request import DEFAULTS as SLURM_DEFAULTS
from .progress import Progress
from .server_process import ServerProcess
from .state import Kept


class RemoteSingularitySpawner(Spawner):
    """Start single-user servers in Singularity/Apptainer on a node the user picks
    (placement "ssh") or that Slurm allocates (placement "slurm")."""

    placement = Enum(
        list(PLACEMENTS),
        default_value="ssh",
        help="""How the node is chosen. "ssh": the user picks one of nodelist and the server
        is started there over SSH. "slurm": the user picks a partition and resources
        (cores, memory, GPUs, time limit); a job submitted as the user on
        slurm_submit_host holds the allocation, and the server runs as a step of that job
        (`srun --overlap`) on the node Slurm allocated, started over SSH as with "ssh".
        The job is cancelled when the server stops. A job may wait in the queue for
        slurm_queue_timeout; start_timeout is then the server's own start, once its job
        runs.""",
    ).tag(config=True)

    slurm_queue_timeout = Integer(
        3600,
        min=0,
        help="""placement slurm: seconds a server's job may wait in the queue for its node;
        then the job is cancelled and the spawn fails saying why it waited. The Hub waits
        for the start this long plus start_timeout, which the server has for its own start
        once the job runs. The spawn page shows which of the two waits is going on.""",
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
        name -> settings, e.g. {"debug": {"cpus": 4, "memory": "8G", "gpus": 0, "time":
        "2:00:00"}, "gpu": {"accounts": "associations", "constraint": ["a100", "h100"]}}.
        cpus, memory, gpus and time are upper bounds on what a user may ask for, on top of
        the partition's own (a node's CPUs and memory, its MaxTime). Site options: the form
        offers a field for each one an entry has, and only there; a value for another
        partition is refused. "accounts": a list of account names, or "associations": the
        accounts of the user's Slurm associations that apply to the partition
        (`sacctmgr show associations` as the user on slurm_submit_host; with Slurm
        accounting off, AccountingStorageType accounting_storage/none, no account is
        offered). "qos": a list of QOS names. "reservations": a list of reservation names, or
        True for any name(s) the user types. "constraint": a list of feature expressions, or
        True for any the user types, in sbatch's --constraint syntax (feature names joined by
        & and |, `[a|b]`, `[a*2&b*1]`, `(a|b)` and counts `*N`; Slurm 22.05 has no NOT).
        Names are letters, digits and _ . - (at most 64). A field left empty is Slurm's
        default (the user's default account and QOS). Empty: every partition sinfo shows the
        user, with no site options.""",
    ).tag(config=True)

    slurm_default_resources = Dict(
        SLURM_DEFAULTS,
        help="""placement slurm: what a job asks for when the user leaves a field empty: cpus,
        memory ("4G", "512M"), gpus and time ("H:MM:SS" or minutes). A default above a
        partition's limit is lowered to it.""",
    ).tag(config=True)

    slurm_sbatch_args = List(
        Unicode(),
        help="""placement slurm: extra sbatch options of the site for every job, each one word
        `--name` or `--name=value`, passed to sbatch as it is (never through a shell), e.g.
        ['--account=jupyter', '--qos=interactive', '--exclude=node[01-04]',
        '--constraint=[rack1|rack2]&ib']. A value has letters, digits and
        _ . , : / @ % + = - [ ] ( ) | & * ? (no space, quote, backquote, $, ;, \\ or !); those
        of --exclude (a node list or a file name), --constraint and --prefer (feature
        expressions), --account, --qos and --reservation (names) are checked by Slurm's
        grammar. Options the spawner sets itself (partition, resources, time, job name,
        output) are refused, and so are --account, --qos, --reservation and --constraint
        when a partition of slurm_partitions lets users choose them.""",
    ).tag(config=True)

    singularity_exe_path = Unicode(
        "singularity",
        help="""The singularity (or apptainer) executable on the nodes: a name found on the
        login PATH of the users on the node, or an absolute path.""",
    ).tag(config=True)

    singularity_container_path = Unicode(
        "",
        help="""Path of the container image (SIF file or sandbox directory) on the nodes: the
        one image when `images` is empty. Every node must see it at this path (copy it or
        use a shared file system). This or `images` is required.""",
    ).tag(config=True)

    images = Union(
        [List(Dict()), Callable()],
        default_value=[],
        help="""The images users may choose from, in the order the form shows them; the first
        a user may use is the default. A list of dicts with the keys `name` (what
        user_options["image"] carries: letters, digits, '_', '.', '-'), `path` (on the
        nodes), and optionally `display_name`, `description` (shown in the form), `binds`
        (bound into this image's containers too, in default_bind_path's syntax), `args`
        (extra options for `singularity exec`), `gpu` (true: gpu_singularity_args on every
        node, not only on gpu_nodes) and `groups` (the JupyterHub groups whose members may
        use it; everyone when unset). Or a callable taking the spawner and returning such a
        list (or an awaitable of it), to build it per user. Empty: the one image of
        singularity_container_path, named after its file.""",
    ).tag(config=True)

    check_image_version = Bool(
        True,
        help="""Before a server starts, ask the image which JupyterHub it carries (cached on the
        node per image path, size and modification time). Another major version than the
        Hub's fails the spawn with a sentence naming both; another minor version starts
        with a warning in the progress and the log. False: no check.""",
    ).tag(config=True)

    singularity_args = List(
        Unicode(),
        help="""Extra options for `singularity exec`, e.g. ['--pid'].
        Use only flags your Singularity/Apptainer version knows.""",
    ).tag(config=True)

    gpu_nodes = List(
        Unicode(),
        help="""Names (as in nodelist) of the nodes that have GPUs. The form marks them, and a
        server started on one gets gpu_singularity_args. With placement slurm, a job that asked
        for GPUs gets them on any node.""",
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
        list(LOGIN_METHODS),
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
        help="""Node-wide directory of the scripts that `remote-singularity-spawner deploy` installs, one
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
        (low, high), (least, most) = proposal["value"], calls.PORT_BOUNDS
        if not least <= low <= high <= most:
            raise ValueError(f"port_range {low}-{high} must lie within {least}-{most}")
        return proposal["value"]

    # The clock of start_timeout and the poll grace period (tests set their own).
    clock = staticmethod(time.monotonic)
    # Whether the server's port answers when its node cannot be asked (tests set their own).
    probe_port = staticmethod(remote.probe_port)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._steps = Progress()
        # The running server, as the state keeps it (None: none).
        self.placed: Placed | None = None
        self.process: ServerProcess | None = None
        # The spawn under way: (the options it was made from, the placement's request, the image).
        self._request: tuple[dict, object, Image] | None = None
        self._certs_moved = False  # move_certs put this spawn's certificate on its node
        self._starting = False

    @cached_property
    def parts(self) -> Parts:
        """The spawner's parts, made at first use from its configuration (parts.py)."""
        return make_parts(self, self._steps, super().create_certs)

    async def validated_request(self, user_options=None, again: bool = False):
        """The placement's request from *user_options* (default: this spawn's), validated once
        per spawn (*again*: anew); SpawnException (400) naming a bad value."""
        options = dict((self.user_options if user_options is None else user_options) or {})
        if again or self._request is None or self._request[0] != options:
            image, where = await self.parts.images.choose(options)
            self._request = (options, await self.parts.placer.validate(where), image)
        return self._request[1]

    # --- start ---------------------------------------------------------------------------

    def run_pre_spawn_hook(self):
        """JupyterHub gives start() start_timeout seconds: a queue's wait is added to them."""
        self.start_timeout = self.parts.placer.hub_start_timeout()
        return super().run_pre_spawn_hook()

    async def start(self):
        """Start the server where the placement puts it; return its (address, port).

        Raises SpawnException with a sentence naming the node and the cause.
        """
        self._starting, self.placed = True, None
        deadline = self.clock() + self.start_timeout
        self._steps.restart()
        try:
            return await self._start(deadline)
        except Exception:
            # A server that did not start needs no certificate and no job (the Hub
            # calls stop() only for a server that poll() says is running).
            await self._release(self.placed, self.parts.tls.on_node)
            self.placed = None
            raise
        finally:
            self._starting, self._request, self._certs_moved = False, None, False

    async def _start(self, deadline: float):
        default_binds = self.parts.server.configured_binds()
        request = await self.validated_request()
        image = self._request[2]
        login = self.parts.login_name()
        placed = self.placed = await self.parts.placer.place(request, login, self._steps, deadline)
        deadline = min(deadline, self.clock() + self.parts.placer.server_start_timeout())
        self.ip, self.port = placed.address, 0
        if self.internal_ssl and not self._certs_moved:
            # The node became known only now (a Slurm job's): its certificate, made for it.
            self.cert_paths = await self.parts.tls.install(Node(placed.node, placed.address), placed.login)
        binds, command = [*default_binds, *image.binds, *request.binds], [*self.cmd, *self.get_args()]
        call = self.parts.server.start_call(
            placed, image, binds, command, self.get_env(), deadline - self.clock()
        )
        certs = self.parts.tls.on_node

        def stop_when_started(future, placed):
            self.parts.resources.in_background(self._stop_late_start(future, placed, certs))

        process = self.process = await self.parts.server.start(placed, image, call, stop_when_started)
        self.port = process.port
        self.parts.poll_grace.reset()
        self._steps.report(90, f"the server is up on {placed.node}; waiting for it to answer the Hub")
        self.log.info(
            "Started %s on %s: pid %d, port %d, log %s",
            self._log_name, placed.node, process.pid, process.port, process.log_path,
        )  # fmt: skip
        return (placed.address, process.port)

    async def _stop_late_start(self, future, placed: Placed, certs: CertsOnNode | None):
        """Stop what a start the Hub gave up on (or stopped) started, then release it.

        *placed* and *certs* are passed: the Hub clears the state before this is done.
        """
        await self.parts.server.stop_late_start(future, placed)
        await self._release(placed, certs)

    async def _release(self, placed: Placed | None, certs: CertsOnNode | None) -> None:
        """What a server that ended (or never started) leaves: its certificate, its placement."""
        await self.parts.tls.remove(certs)
        if placed is not None:
            await self.parts.placer.release(placed)

    async def _release_kept(self) -> None:
        """Release the running server's certificate and placement, once."""
        await self._release(self.placed, self.parts.tls.on_node)
        if self.placed is not None:
            self.placed = dataclasses.replace(self.placed, job_id="")

    # --- poll ----------------------------------------------------------------------------

    async def poll(self):
        """None while the server runs (or starts), else an exit status (0: not started)."""
        if self._starting:
            return None
        if self.process is None:
            return 0
        placed = self.placed
        try:
            reply = await self.parts.server.check(placed, self.process)
        except remote.CertificateSettingError:
            # Logged once, where the settings are read; not again at every poll.
            return await self._unreachable("the Hub's certificate settings are unusable (see its log)")
        except Exception as e:  # noqa: BLE001 - any failure to ask the node
            return await self._unreachable(self.parts.access.explain(e))
        if reply.exit_code == remote.ExitCode.OK:
            self.parts.poll_grace.reset()
            return None
        if reply.exit_code == remote.ExitCode.NOT_RUNNING:
            self.log.info("%s on %s is no longer running", self._log_name, placed.node)
            # The Hub calls stop() only for a running server: clean up here.
            await self._release_kept()
            return 0
        return await self._unreachable(f"check_pid.sh failed (exit code {reply.exit_code}): {reply.stderr}")

    async def _unreachable(self, error: str):
        """Poll could not ask the node: ask the placement, then the grace period."""
        if await self.parts.placer.gone(self.placed):
            await self._release_kept()
            return 1
        status = await self.parts.poll_grace.verdict(self.placed, self.process.port, error)
        if status is not None and self.placed.job_id:
            # Gone: its job must not keep holding the allocation. In the background: on a
            # dead node the job ends only once Slurm gives the node up, and the Hub should
            # hear now that the server is gone.
            self.parts.resources.in_background(self._release_kept())
        return status

    # --- stop ----------------------------------------------------------------------------

    async def stop(self, now=False):
        """Stop the server and what it started; return when it is gone.

        *now*: SIGKILL right after SIGTERM, without waiting term_timeout.
        """
        if self.process is None:
            pending = self.parts.server.take_pending()
            if pending is not None:
                # Still starting on the node (the Hub shuts down with cleanup_servers):
                # wait for it and stop what it started, or it would be left running.
                self.log.info("Stopping %s once its start on the node returns", self._log_name)
                await self._stop_late_start(*pending, self.parts.tls.on_node)
            return
        placed, process = self.placed, self.process
        try:
            reply = await self.parts.server.stop(placed, process, now)
        except Exception as e:  # noqa: BLE001 - the Hub forgets the server either way
            self.log.error(
                "Cannot stop %s (pid %d on %s): %s. It may still be running there.",
                self._log_name, process.pid, placed.node, self.parts.access.explain(e),
            )  # fmt: skip
            await self.parts.placer.release(placed)  # scancel ends the server wherever it runs
            return
        self.log.info("Stopped %s on %s (%s)", self._log_name, placed.node, reply.data.get("signal", "?"))
        self.process = None
        await self._release_kept()

    # --- internal_ssl ----------------------------------------------------------------------

    async def create_certs(self):
        """The server's certificate, naming its node when that is known before the start.

        JupyterHub calls this (with ``c.JupyterHub.internal_ssl``) after the user's
        options are applied and before ``start()``. With placement slurm the node is
        known only once the job runs: start() makes the certificate then.
        """
        node = self.parts.placer.node_before_start(await self.validated_request())
        return {} if node is None else await self.parts.tls.create(node)

    async def move_certs(self, paths):
        """Copy the key, certificate and CA to the node; return their paths there."""
        if not paths:
            return {}
        node = self.parts.placer.node_before_start(await self.validated_request())
        moved = await self.parts.tls.move(paths, node, self.parts.login_name())
        self._certs_moved = True
        return moved

    # --- state -----------------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.process is not None:
            certs = self.parts.tls.on_node.directory if self.parts.tls.on_node else ""
            state.update(state_mod.dump(Kept(self.placed, self.process, certs)))
        return state

    def load_state(self, state):
        super().load_state(state)
        if not state.get("pid"):
            return
        try:
            kept = state_mod.restore(state)
        except state_mod.StateError as e:
            self.log.error("RemoteSingularitySpawner: cannot load the state of %s: %s", self._log_name, e)
            return
        self.placed, self.process, self.port = kept.placed, kept.process, kept.process.port
        if kept.certs_dir:
            self.parts.tls.on_node = CertsOnNode(kept.placed.address, kept.placed.login, kept.certs_dir)

    def clear_state(self):
        super().clear_state()
        self.placed, self.process, self.port = None, None, 0
        self.parts.tls.on_node = None
        self.parts.poll_grace.reset()
        self._steps.clear()

    # --- progress --------------------------------------------------------------------------

    async def progress(self):
        """The steps of the start under way, as JupyterHub's progress events, replayed to a
        late listener; JupyterHub ends the stream and adds the final event itself."""
        async for event in self._steps.events():
            yield event
