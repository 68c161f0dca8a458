"""placement = "slurm": the queue picks the node, the server runs inside a Slurm job.

One spawn, in the order it happens:

1. the form shows the partitions ``sinfo`` shows the user on the submit host
   (cached like the node status) and the resource fields with their limits;
2. the choice is checked in two stages (slurm_request.py): its format before
   any connection, then the partition, host and limits against what sinfo
   said; ``sbatch`` runs only for a choice that passed both;
3. ``slurm_job.sh submit`` on the submit host, as the user, submits a job that
   only holds the allocation; the placement follows it (``slurm_job.sh state``)
   and tells the spawn page why it waits, until a node is allocated;
4. the spawner then starts the server on that node as a step of the job
   (``start_singleuser.sh --slurm-job``, ``srun --overlap``).

A placement that fails or is given up cancels its job; releasing a placed
server cancels it too. srun ends with its job, so the process check of poll
also sees a job ended by its time limit or scancel; when the node cannot be
asked, the queue is (:meth:`SlurmPlacement.gone`).
"""

from __future__ import annotations

import asyncio

from jupyterhub.utils import exponential_backoff

from .. import calls, remote
from ..request import OptionsError
from . import Placed, Placement
from .node_status import SlurmView
from .nodes import Node, slurm_node
from .slurm_form import render_slurm_form, slurm_options_from_form
from .slurm_request import (
    HOLDING_STATES,
    WAITING_STATES,
    Partition,
    SlurmRequest,
    check_slurm_format,
    job_ended,
    parse_defaults,
    parse_partition_limits,
    validate_slurm_options,
)
from .slurm_site import check_sbatch_args, wants_associations

# Seconds a cancel waits for the job to end before it is reported still there.
CANCEL_WAIT = 15


class SlurmPlacement(Placement):
    """Placement of a server by Slurm: a job holds the allocation, the server runs in it."""

    def _settings(self):
        """(partition limits, default resources, extra sbatch args); SpawnException if bad."""
        config = self.config
        try:
            limits = parse_partition_limits(config.slurm_partitions)
            defaults = parse_defaults(config.slurm_default_resources)
            return limits, defaults, check_sbatch_args(config.slurm_sbatch_args, limits)
        except ValueError as e:
            raise self.fail(f"the Hub is misconfigured: {e}", "config") from None

    async def submit_host(self) -> Node:
        """Where users run sbatch: slurm_submit_host, else the first node of the node list."""
        configured = self.config.slurm_submit_host
        if not configured:
            return (await self.usable_nodes())[0]
        hosts = await self.access.in_thread(self.resources.nodes, configured, self.log)
        if not hosts:
            raise self.fail(
                "the Hub is misconfigured: c.RemoteSingularitySpawner.slurm_submit_host "
                f"{configured!r} is not a valid name:ip record",
                "config",
            )
        return hosts[0]

    # --- the form and the request ---------------------------------------------------------

    async def view(self) -> SlurmView:
        """The partitions sinfo shows the user (cached node_status_ttl seconds)."""
        submit = await self.submit_host()
        try:
            login = self.access.login.name()
        except OptionsError as e:
            return SlurmView(error=str(e))
        key = (submit.address, login, "partitions")
        return await self.for_form(self.resources.partitions, key, self._fetch_partitions, submit, login)

    def _fetch_partitions(self, submit: Node, login: str) -> SlurmView:
        """Blocking: run ``slurm_job.sh partitions`` on the submit host as *login*."""
        associations = wants_associations(self.config.slurm_partitions)  # the user's accounts too
        call = calls.partitions_call(self.config.node_status_timeout, associations)
        try:
            reply = self.ask_for_form(submit.address, login, call)
        except remote.RemoteError as e:
            self.log.warning("Cannot ask Slurm on %s for %s: %s", submit.label, login, e)
            return SlurmView(error=f"{submit.label}: {e.for_user}")
        if reply.exit_code != remote.ExitCode.OK:
            self.log.warning("sinfo failed on %s for %s: %s", submit.label, login, reply.stderr)
            return SlurmView(error=f"sinfo failed on {submit.label}: {reply.stderr}")
        try:
            partitions = Partition.all_from_reply(reply.data)
        except (TypeError, ValueError) as e:
            self.log.error("Unexpected reply from slurm_job.sh partitions on %s: %s", submit.label, e)
            return SlurmView(error=f"Slurm's answer on {submit.label} was not understood; {remote.TOLD}")
        return SlurmView(partitions={p.name: p for p in partitions})

    async def render_form(self) -> str:
        limits, defaults, _ = self._settings()
        view = await self.view()
        shown = [p for p in view.partitions.values() if not limits or p.name in limits]
        return render_slurm_form(
            shown, limits, defaults, self.config.default_bind_path, view.error, self.resources.templates
        )

    def options_from_form(self, formdata) -> dict:
        return slurm_options_from_form(formdata)

    async def validate(self, user_options) -> SlurmRequest:
        """The user's SlurmRequest; SpawnException (400) naming the field if a value is bad.

        The format is checked before any connection; the partition, host and
        limits against what sinfo shows the user. sbatch never runs for a refused choice.
        """
        limits, defaults, _ = self._settings()
        try:
            check_slurm_format(user_options)
            self.access.login.name()
        except OptionsError as e:
            raise self.fail(f"Cannot start your server: {e}", "options") from None
        view = await self.view()
        if not view.partitions:
            submit = await self.submit_host()
            cause = f"cannot ask Slurm which partitions you may use ({view.error})"
            if not view.error:
                cause = f"sinfo on {submit.label} shows you no partition"
            raise self.fail(f"Cannot start your server: {cause}", "unreachable")
        try:
            return validate_slurm_options(user_options, view.partitions, limits, defaults)
        except OptionsError as e:
            raise self.fail(f"Cannot start your server: {e}", "options") from None

    # --- placing: a job, then its node ----------------------------------------------------

    @property
    def queue_timeout(self) -> float:
        return float(self.config.slurm_queue_timeout)

    async def place(self, request: SlurmRequest, login, steps, deadline) -> Placed:
        """Submit the job and wait for its node; a job that will not hold the server is cancelled."""
        _, _, sbatch_args = self._settings()
        submit = await self.submit_host()
        steps.report(5, f"submitting a job to partition {request.partition} on {submit.label}")
        call = calls.submit_call(
            job_name=calls.job_name(self.hub_user, self.server_name),
            partition=request.partition,
            resources=request.resources,
            host=request.host,
            output_dir=calls.server_dir(self.config.remote_state_dir, self.hub_user, self.server_name),
            sbatch_args=sbatch_args,
            timeout=self.config.ssh_command_timeout,
            site_options=request.site.to_dict(),
        )
        reply = await self._ask_slurm(submit, login, call, "submit your job")
        job = str(reply.data.get("job_id", ""))
        if not job.isdigit():
            self.log.error("Unexpected reply from slurm_job.sh submit on %s: %r", submit.label, reply.data)
            raise self.fail(
                f"Cannot submit your job on {submit.label}: Slurm's answer was not understood; {remote.TOLD}",
                "protocol",
            )
        self.log.info(
            "Submitted Slurm job %s for %s (partition %s, %s)",
            job, self.access.log_name, request.partition, request.resources.to_dict(),
        )  # fmt: skip
        placed = Placed("", "", login, job_id=job, partition=request.partition)
        try:
            node = await self._wait_for_allocation(submit, placed, steps, deadline)
        except asyncio.CancelledError:
            # The Hub gave up (start_timeout): leave no job behind.
            self.resources.in_background(self.release(placed))
            raise
        except Exception:
            await self.release(placed)
            raise
        # A job with GPUs gets gpu_singularity_args (--nv) wherever Slurm put it.
        gpu = request.resources.gpus > 0 or node.label in self.config.gpu_nodes
        return Placed(node.label, node.address, login, job, request.partition, gpu=gpu)

    async def _ask_slurm(self, submit: Node, login: str, call, what: str):
        """Run a slurm_job.sh call; SpawnException naming the submit host if it fails."""
        try:
            reply = await self.access.call(submit.address, login, call)
        except Exception as e:  # noqa: BLE001 - any failure on the way to the submit host
            raise self.fail(f"Cannot {what} on {submit.label}: {self.access.explain(e)}", "ssh") from None
        if reply.exit_code != remote.ExitCode.OK:
            raise self.fail(f"Cannot {what} on {submit.label}: {reply.stderr}", "slurm")
        return reply

    async def _wait_for_allocation(self, submit: Node, placed: Placed, steps, deadline: float) -> Node:
        """Follow the job until it runs; report why it waits. The allocated node."""
        job, seen = placed.job_id, {}
        call = calls.job_state_call(job, self.config.ssh_command_timeout)

        async def allocated() -> bool:
            reply = await self._ask_slurm(submit, placed.login, call, f"follow your Slurm job {job}")
            said = self._queued(seen, placed) if seen else ""
            seen.update(reply.data)
            if seen.get("state") not in WAITING_STATES:
                return True
            if self._queued(seen, placed) != said:  # each change once, not every look at the queue
                steps.report(15, self._queued(seen, placed))
            return False

        # At most slurm_queue_timeout, and giving up before the Hub does, to say why and
        # cancel the job meanwhile.
        queue_timeout, clock = self.queue_timeout, self.config.clock
        left = deadline - clock()
        server_timeout = self.server_start_timeout()
        patience = max(1.0, min(queue_timeout, left - min(15.0, server_timeout / 4)))
        setting = "slurm_queue_timeout" if patience >= queue_timeout else "start_timeout"
        steps.report(15, f"waiting in the queue for a node, up to {_duration(patience)} ({setting})")
        began = clock()
        try:
            await exponential_backoff(
                allocated, "", start_wait=0.2, scale_factor=1.5, max_wait=3, timeout=patience
            )
        except asyncio.TimeoutError:
            raise self.fail(
                f"Cannot start your server: still {self._queued(seen, placed)} after {patience:.0f} s; "
                f"the job {job} was cancelled. Try fewer resources or another partition, "
                f"or ask your administrator to raise {setting}.",
                "timeout",
            ) from None
        if seen.get("state") != "RUNNING":
            raise self.fail(
                f"Your Slurm job {job} ended before your server started: "
                f"{seen.get('state')} ({seen.get('reason') or 'no reason given'})",
                "slurm",
            )
        node = await self._allocated_node(str(seen.get("node", "")), str(seen.get("address", "")))
        steps.report(20, f"allocated node {node.label} (job {job})")
        steps.report(
            20,
            f"waited {_duration(clock() - began)} in the queue; "
            f"the server now has up to {_duration(server_timeout)} to start (start_timeout)",
        )
        return node

    @staticmethod
    def _queued(seen: dict, placed: Placed) -> str:
        """'queued in partition P: Reason, position N', from a state reply."""
        text = f"queued in partition {seen.get('partition') or placed.partition}"
        reason = seen.get("reason")
        if reason and reason != "None":
            text += f": {reason}"
        if seen.get("position"):
            text += f", position {seen['position']}"
        return text

    async def _allocated_node(self, name: str, address: str) -> Node:
        """The allocated node: its address from the node list, else from Slurm's NodeAddr."""
        listed = {n.label: n for n in await self.nodes()}
        try:
            return await self.access.in_thread(slurm_node, name, address, listed)
        except ValueError as e:
            raise self.fail(
                f"Cannot reach the node Slurm allocated, {name!r} (NodeAddr {address!r}): {e}", "slurm"
            ) from None

    # --- a placed server's job ------------------------------------------------------------

    async def gone(self, placed: Placed) -> bool:
        """Whether Slurm says the server's job has ended (its node cannot be asked)."""
        state = await self._job_state(placed)
        if job_ended(state):
            self.log.warning(
                "The Slurm job %s of %s is %s: the server is gone", placed.job_id, self.access.log_name, state
            )
            return True
        return False

    async def release(self, placed: Placed) -> None:
        """scancel the job on the submit host, and wait until it ended; logged, never raises."""
        if not placed.job_id:
            return
        job, name = placed.job_id, self.access.log_name
        try:
            submit = await self.submit_host()
            call = calls.cancel_call(job, CANCEL_WAIT, self.config.ssh_command_timeout, HOLDING_STATES)
            reply = await self.access.call(submit.address, placed.login, call)
        except Exception as e:  # noqa: BLE001 - a clean-up logs whatever failed
            self.log.error("Cannot cancel Slurm job %s of %s: %s", job, name, self.access.explain(e))
            return
        if reply.exit_code != remote.ExitCode.OK:
            self.log.error("Cannot cancel Slurm job %s of %s: %s", job, name, reply.stderr)
            return
        self.log.info("Slurm job %s of %s has ended (%s)", job, name, reply.data.get("state"))

    async def _job_state(self, placed: Placed) -> str:
        """The job's state as squeue shows it ('GONE' once forgotten); '' if unknown."""
        try:
            submit = await self.submit_host()
            call = calls.job_state_call(placed.job_id, self.config.ssh_command_timeout)
            reply = await self.access.call(submit.address, placed.login, call)
        except Exception as e:  # noqa: BLE001 - the caller falls back to its other checks
            self.log.warning(
                "Cannot ask Slurm about job %s of %s: %s", placed.job_id, self.access.log_name, e
            )
            return ""
        return str(reply.data.get("state", "")) if reply.exit_code == remote.ExitCode.OK else ""


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min`` or ``2 h 30 min``, for a person."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours and minutes else f"{hours} h" if hours else f"{minutes} min"
