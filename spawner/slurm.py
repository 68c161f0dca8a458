"""placement = "slurm": the queue picks the node, the server runs inside a Slurm job.

One spawn, in the order it happens:

1. the form shows the partitions ``sinfo`` shows the user on the submit host
   (cached like the node status) and the resource fields with their limits;
2. the choice is checked in two stages (slurm_options.py): its format before
   any connection, then the partition, host and limits against what sinfo
   said; ``sbatch`` runs only for a choice that passed both;
3. ``slurm_job.sh submit`` on the submit host, as the user, submits a job that
   only holds the allocation; the spawner follows it (``slurm_job.sh state``)
   and tells the spawn page why it waits, until a node is allocated;
4. ``start_singleuser.sh --slurm-job J`` starts the server on that node as a
   step of the job (``srun --overlap``), as in SSH placement otherwise.

A start that fails, is given up or times out cancels its job; so does stop,
and a poll that finds the server gone. srun ends with its job, so the
process check of poll also sees a job ended by its time limit or scancel;
when the node cannot be asked, the queue is.
"""

from __future__ import annotations

import asyncio
import ipaddress
from functools import partial

from jupyterhub.utils import exponential_backoff

from . import calls, remote
from .nodes import HOSTNAME_RE, Node, resolve_address
from .options import OptionsError
from .resources import in_background, shared
from .slurm_options import (
    Partition,
    check_sbatch_args,
    check_slurm_format,
    parse_defaults,
    parse_partition_limits,
    render_slurm_form,
    validate_slurm_options,
)
from .status import SlurmView

# Job states in which the job still holds (or is about to hold) its allocation.
_WAITING = ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")
# Seconds a cancel waits for the job to end before it is reported still there.
CANCEL_WAIT = 15

class SlurmPlacement:
    """Placement of a server by Slurm. Mixed into RemoteSingularitySpawner."""

    def _slurm_settings(self):
        """(partition limits, default resources, extra sbatch args); SpawnException if bad."""
        try:
            return (
                parse_partition_limits(self.slurm_partitions),
                parse_defaults(self.slurm_default_resources),
                check_sbatch_args(self.slurm_sbatch_args),
            )
        except ValueError as e:
            raise self._fail(f"the Hub is misconfigured: {e}", reason="config") from None

    async def submit_host(self) -> Node:
        """Where users run sbatch: slurm_submit_host, else the first node of the node list."""
        if not self.slurm_submit_host:
            return (await self.usable_nodes())[0]
        hosts = await self._in_thread(shared.nodes, self.slurm_submit_host, self.log)
        if not hosts:
            raise self._fail(
                "the Hub is misconfigured: c.RemoteSingularitySpawner.slurm_submit_host "
                f"{self.slurm_submit_host!r} is not a valid name:ip record",
                reason="config",
            )
        return hosts[0]

    async def slurm_view(self) -> SlurmView:
        """The partitions sinfo shows the user (cached node_status_ttl seconds)."""
        submit = await self.submit_host()
        try:
            key = (submit.address, self._login_name(), "partitions")
        except OptionsError as e:
            return SlurmView(error=str(e))
        fetch = partial(self._fetch_partitions, submit, key[1])
        executor = shared.executor(self.ssh_threads)
        return await shared.partitions.get(
            key, fetch, executor, self.node_status_timeout, self.node_status_ttl
        )

    def _fetch_partitions(self, submit: Node, login: str) -> SlurmView:
        """Blocking: run ``slurm_job.sh partitions`` on the submit host as *login*."""
        target = self._target(submit.address, login, min(self.ssh_connect_timeout, self.node_status_timeout))
        try:
            reply = self._with_session(
                target, remote.NodeSession.call, calls.partitions_call(self.node_status_timeout)
            )
        except remote.RemoteError as e:
            self.log.warning("Cannot ask Slurm on %s for %s: %s", submit.label, login, e)
            return SlurmView(error=f"{submit.label}: {e}")
        if reply.exit_code != remote.ExitCode.OK:
            self.log.warning("sinfo failed on %s for %s: %s", submit.label, login, reply.stderr)
            return SlurmView(error=f"sinfo failed on {submit.label}: {reply.stderr}")
        try:
            partitions = [Partition.from_reply(item) for item in reply.data.get("partitions", [])]
        except (TypeError, ValueError) as e:
            return SlurmView(error=f"unexpected reply from slurm_job.sh on {submit.label}: {e}")
        return SlurmView(partitions={p.name: p for p in partitions})

    async def check_slurm_options(self, user_options):
        """The user's SlurmRequest; SpawnException (400) naming the field if a value is bad.

        The format is checked before any connection; the partition, host and
        limits against what sinfo shows the user. sbatch never runs for a refused choice.
        """
        limits, defaults, _ = self._slurm_settings()
        try:
            check_slurm_format(user_options)
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None
        self._login()
        view = await self.slurm_view()
        if not view.partitions:
            submit = await self.submit_host()
            cause = f"cannot ask Slurm which partitions you may use ({view.error})"
            if not view.error:
                cause = f"sinfo on {submit.label} shows you no partition"
            raise self._fail(f"Cannot start your server: {cause}", reason="unreachable")
        try:
            return validate_slurm_options(user_options, view.partitions, limits, defaults)
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None

    async def render_slurm_form(self) -> str:
        limits, defaults, _ = self._slurm_settings()
        view = await self.slurm_view()
        shown = [p for p in view.partitions.values() if not limits or p.name in limits]
        return render_slurm_form(shown, limits, defaults, self.default_bind_path, error=view.error)

    # --- start -------------------------------------------------------------------------

    async def _place(self):
        """Where the server starts: (node, binds, Slurm job id or '')."""
        if self.placement != "slurm":
            node, options = await self.check_options(self.user_options)
            return node, options.binds, ""
        request = await self.check_slurm_options(self.user_options)
        _, _, sbatch_args = self._slurm_settings()
        submit, login = await self.submit_host(), self._login()
        self.login = login
        target = self._target(submit.address, login)
        self._steps.report(5, f"submitting a job to partition {request.partition} on {submit.label}")
        call = calls.submit_call(
            job_name=calls.job_name(self.user.name, self.name),
            partition=request.partition,
            resources=request.resources,
            host=request.host,
            output_dir=self._server_dir(),
            sbatch_args=sbatch_args,
            timeout=self.ssh_command_timeout,
        )
        reply = await self._ask_slurm(target, submit, call, "submit your job")
        self.job_id, self.partition = str(reply.data.get("job_id", "")), request.partition
        if not self.job_id.isdigit():
            raise self._fail(
                f"unexpected reply from slurm_job.sh on {submit.label}: {reply.data!r}", reason="protocol"
            )
        self.log.info(
            "Submitted Slurm job %s for %s (partition %s, %s)",
            self.job_id, self._log_name, request.partition, request.resources.to_dict(),
        )  # fmt: skip
        try:
            node = await self._wait_for_allocation(target, submit)
        except asyncio.CancelledError:
            # The Hub gave up (start_timeout): leave no job behind.
            in_background(self._cancel_job(self.job_id, login))
            raise
        return node, request.binds, self.job_id

    async def _ask_slurm(self, target, submit: Node, call, what: str):
        """Run a slurm_job.sh call; SpawnException naming the submit host if it fails."""
        try:
            reply = await self._on_node(target, remote.NodeSession.call, call)
        except Exception as e:  # noqa: BLE001 - any failure on the way to the submit host
            raise self._fail(f"Cannot {what} on {submit.label}: {self._explain(e)}", reason="ssh") from None
        if reply.exit_code != remote.ExitCode.OK:
            raise self._fail(f"Cannot {what} on {submit.label}: {reply.stderr}", reason="slurm")
        return reply

    async def _wait_for_allocation(self, target, submit: Node) -> Node:
        """Follow the job until it runs; report why it waits. The allocated node."""
        job, seen = self.job_id, {}
        call = calls.job_state_call(job, self.ssh_command_timeout)

        async def allocated() -> bool:
            reply = await self._ask_slurm(target, submit, call, f"follow your Slurm job {job}")
            said = self._queued(seen) if seen else ""
            seen.update(reply.data)
            if seen.get("state") not in _WAITING:
                return True
            if self._queued(seen) != said:  # each change once, not every look at the queue
                self._steps.report(15, self._queued(seen))
            return False

        # Give up before the Hub does, to say why and cancel the job meanwhile.
        patience = max(1.0, self.start_timeout - min(15.0, self.start_timeout / 4) - self._elapsed())
        try:
            await exponential_backoff(
                allocated, "", start_wait=0.2, scale_factor=1.5, max_wait=3, timeout=patience
            )
        except asyncio.TimeoutError:
            await self._cancel_job(job, self.login)
            raise self._fail(
                f"Cannot start your server: still {self._queued(seen)} after {patience:.0f} s; "
                f"the job {job} was cancelled. Try fewer resources or another partition, "
                "or ask your administrator to raise start_timeout.",
                reason="timeout",
            ) from None
        if seen.get("state") != "RUNNING":
            raise self._fail(
                f"Your Slurm job {job} ended before your server started: "
                f"{seen.get('state')} ({seen.get('reason') or 'no reason given'})",
                reason="slurm",
            )
        node = await self._allocated_node(str(seen.get("node", "")), str(seen.get("address", "")))
        self._steps.report(20, f"allocated node {node.label} (job {job})")
        return node

    def _queued(self, seen: dict) -> str:
        """'queued in partition P: Reason, position N', from a state reply."""
        text = f"queued in partition {seen.get('partition') or self.partition}"
        reason = seen.get("reason")
        if reason and reason != "None":
            text += f": {reason}"
        if seen.get("position"):
            text += f", position {seen['position']}"
        return text

    async def _allocated_node(self, name: str, address: str) -> Node:
        """The allocated node: its address from the node list, else from Slurm's NodeAddr."""
        listed = {n.label: n for n in await self.get_nodes()}
        if name in listed:
            return listed[name]
        try:
            return Node(name, str(ipaddress.ip_address(address)))
        except ValueError:
            pass
        if HOSTNAME_RE.match(address):
            try:
                return Node(name, await self._in_thread(resolve_address, address))
            except OSError as e:
                raise self._fail(
                    f"Cannot reach the allocated node {name}: {address}: {e}", reason="ssh"
                ) from None
        raise self._fail(
            f"Slurm allocated node {name!r} with address {address!r}, which is neither in "
            "c.RemoteSingularitySpawner.nodelist nor a valid address",
            reason="slurm",
        )

    # When the start under way began (spawner.clock), for what is left of start_timeout.
    _start_began: float | None = None

    def _elapsed(self) -> float:
        return self.clock() - self._start_began if self._start_began is not None else 0.0

    def _time_left(self) -> float:
        """Seconds of start_timeout left for the server to start."""
        return self.start_timeout - self._elapsed()

    # --- the job's end -------------------------------------------------------------------

    async def _release(self, certs_location=None, job=None) -> None:
        """What a server that ended (or never started) leaves: certificates, its job."""
        await self._remove_certs(*(certs_location or self._certs_location()))
        job_id, login = job or (self.job_id, self.login)
        if job_id:
            await self._cancel_job(job_id, login)

    async def _cancel_job(self, job_id: str, login: str) -> bool:
        """scancel the job on the submit host, and wait until it ended; logged, never raises."""
        try:
            submit = await self.submit_host()
            target = self._target(submit.address, login)
            call = calls.cancel_call(job_id, CANCEL_WAIT, self.ssh_command_timeout)
            reply = await self._on_node(target, remote.NodeSession.call, call)
        except Exception as e:  # noqa: BLE001 - a clean-up logs whatever failed
            self.log.error("Cannot cancel Slurm job %s of %s: %s", job_id, self._log_name, self._explain(e))
            return False
        if reply.exit_code != remote.ExitCode.OK:
            self.log.error("Cannot cancel Slurm job %s of %s: %s", job_id, self._log_name, reply.stderr)
            return False
        self.log.info("Slurm job %s of %s has ended (%s)", job_id, self._log_name, reply.data.get("state"))
        if job_id == self.job_id:
            self.job_id = ""
        return True

    async def _unreachable(self, error: str):
        """The node cannot be asked: a job that Slurm says has ended means the server has."""
        if self.job_id:
            state = await self._job_state()
            if state and state not in (*_WAITING, "RUNNING", "COMPLETING"):
                self.log.warning(
                    "Cannot check %s on %s (%s), and its Slurm job %s is %s: the server is gone",
                    self._log_name, self.node, error, self.job_id, state,
                )  # fmt: skip
                await self._release()
                return 1
        status = await super()._unreachable(error)
        if status is not None and self.job_id:
            # Gone: its job must not keep holding the allocation. In the background: on a
            # dead node the job ends only once Slurm gives the node up, and the Hub should
            # hear now that the server is gone.
            in_background(self._release(self._certs_location(), (self.job_id, self.login)))
        return status

    async def _job_state(self) -> str:
        """The job's state as squeue shows it ('GONE' once forgotten); '' if unknown."""
        try:
            submit = await self.submit_host()
            target = self._target(submit.address, self.login)
            call = calls.job_state_call(self.job_id, self.ssh_command_timeout)
            reply = await self._on_node(target, remote.NodeSession.call, call)
        except Exception as e:  # noqa: BLE001 - the caller falls back to its other checks
            self.log.warning("Cannot ask Slurm about job %s of %s: %s", self.job_id, self._log_name, e)
            return ""
        return str(reply.data.get("state", "")) if reply.exit_code == remote.ExitCode.OK else ""
