"""The server's process on its placed node: started, checked and stopped with the node scripts.

``start_singleuser.sh`` runs in a worker thread while its steps are relayed
to the spawn page; a start the Hub gives up on (start_timeout) or stops while
it runs is stopped once it returns, so no server is left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import jupyterhub

from . import calls, remote
from .failures import StopFailed
from .images import Image
from .node_access import NodeAccess
from .placement import Fail, Placed
from .progress import Progress
from .request import Bind, OptionsError, parse_binds


@dataclass(frozen=True)
class ServerProcess:
    """The server's process on its node, as start_singleuser.sh reported it (kept in the state)."""

    pid: int
    start_time: int
    port: int
    log_path: str = ""
    scripts_version: str = ""
    image: str = ""  # the name of the image it runs

    FIELDS: ClassVar[tuple[str, ...]] = ("pid", "start_time", "port", "log_path", "scripts_version", "image")


class ServerOnNode:
    """Runs start_singleuser.sh, check_pid.sh and stop.sh for one spawner's server.

    *config*: the spawner, for its configuration (traits) only.
    """

    def __init__(
        self, config, access: NodeAccess, fail: Fail, steps: Progress, server_dir: str, log: logging.Logger
    ) -> None:
        self.config = config
        self.access = access
        self.fail = fail
        self.steps = steps
        self.server_dir = server_dir
        self.log = log
        # The start_singleuser.sh call in flight and where, while start() waits for it;
        # take_pending() takes it, to stop what it starts.
        self.pending: tuple[asyncio.Future, Placed] | None = None

    def configured_binds(self) -> tuple[Bind, ...]:
        """default_bind_path parsed; SpawnException if it is misconfigured."""
        try:
            return parse_binds(self.config.default_bind_path)
        except OptionsError as e:
            raise self.fail(
                f"the Hub is misconfigured: c.RemoteSingularitySpawner.default_bind_path: {e}", "config"
            ) from None

    def start_call(
        self,
        placed: Placed,
        image: Image,
        binds: Sequence[Bind],
        command: Sequence[str],
        env: dict,
        time_left: float,
    ) -> remote.ScriptCall:
        """The start_singleuser.sh call of *image* on *placed*, with *time_left* of start_timeout."""
        config = self.config
        gpu_args = config.gpu_singularity_args if placed.gpu or image.gpu else []
        try:
            return calls.start_call(
                exe=config.singularity_exe_path,
                image=image.path,
                server_dir=self.server_dir,
                port_range=config.port_range,
                timeout=max(5, int(time_left - config.ssh_connect_timeout - 5)),
                singularity_args=[*config.singularity_args, *image.args, *gpu_args],
                binds=binds,
                command=command,
                env=env,
                slurm_job=placed.job_id,
                hub_jupyterhub=jupyterhub.__version__ if config.check_image_version else "",
                version_cache=calls.version_cache(config.remote_state_dir),
            )
        except ValueError as e:
            raise self.fail(f"the Hub is misconfigured: {e}", "config") from None

    async def start(self, placed: Placed, image: Image, call: remote.ScriptCall, on_cancel) -> ServerProcess:
        """Run start_singleuser.sh (*call*, of *image*) on the placed node; the server's process.

        *on_cancel(future, placed)*: what to do when the Hub gives up meanwhile.
        """
        name = self.access.log_name
        self.log.info(
            "Starting %s on %s (%s) as %s: image %s (%s)",
            name, placed.node, placed.address, placed.login, image.name, image.path,
        )  # fmt: skip
        if self.config.images:  # a choice was offered: say which
            self.steps.report(5, f"starting image {image.name} on {placed.node}")
        self.steps.report(10, f"connecting to {placed.node} as {placed.login}")
        future = self.access.start_server(
            placed.address, placed.login, placed.node, call, self.steps.reporter()
        )
        self.pending = (future, placed)
        try:
            reply, version = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The Hub gave up (start_timeout): do not leave a server behind.
            on_cancel(future, placed)
            raise
        except Exception as e:
            raise self.fail(
                f"Cannot start your server on {placed.node}: {self.access.explain(e)}", "ssh"
            ) from None
        finally:
            taken, self.pending = self.pending is None, None
        if taken:
            raise self.fail(f"Your server on {placed.node} was stopped while it started", "stopped")
        if reply.exit_code == remote.ExitCode.IMAGE_MISMATCH:
            raise self.image_mismatch(placed, image, reply.data)
        if reply.exit_code != remote.ExitCode.OK:
            raise self.fail(
                f"Your server on {placed.node} did not start (exit code {reply.exit_code}):\n{reply.stderr}",
                "start",
            )
        try:
            pid, start_time, port = (int(reply.data[k]) for k in ("pid", "start_time", "port"))
        except (KeyError, TypeError, ValueError):
            self.log.error("Unexpected reply from start_singleuser.sh on %s: %r", placed.node, reply.data)
            raise self.fail(
                f"Cannot start your server on {placed.node}: its start script answered what the Hub "
                f"does not understand; {remote.TOLD}",
                "protocol",
            ) from None
        if reply.data.get("jupyterhub_match") in ("minor", "unknown"):
            theirs = str(reply.data.get("image_jupyterhub", ""))
            found = {"": "could not tell which JupyterHub", "none": "no jupyterhub package"}.get(theirs)
            self.log.warning(
                "%s: the image %s (%s) on %s: %s; the Hub runs JupyterHub %s",
                name, image.name, image.path, placed.node,
                found or f"carries JupyterHub {theirs}", jupyterhub.__version__,
            )  # fmt: skip
        return ServerProcess(pid, start_time, port, str(reply.data.get("log", "")), version, image.name)

    def image_mismatch(self, placed: Placed, image: Image, data: dict) -> Exception:
        """The failure of an image whose JupyterHub has another major version than the Hub's."""
        hub = jupyterhub.__version__
        theirs = str(data.get("image_jupyterhub", "?"))
        self.log.error(
            "The image %s (%s) carries JupyterHub %s; the Hub runs %s. Install jupyterhub==%s in "
            "it, or set c.RemoteSingularitySpawner.check_image_version = False to start it anyway",
            image.name, image.path, theirs, hub, hub,
        )  # fmt: skip
        return self.fail(
            f"Cannot start image {image.name} on {placed.node}: it carries JupyterHub {theirs}, "
            f"and this Hub runs JupyterHub {hub}, another major version, with which the server "
            "could not work. Please choose another image; the administrators have to update this "
            f"one (to jupyterhub {hub}).",
            "image",
        )

    def take_pending(self) -> tuple[asyncio.Future, Placed] | None:
        """The start in flight (its start() then fails as stopped), if any."""
        pending, self.pending = self.pending, None
        return pending

    async def stop_late_start(self, future: asyncio.Future, placed: Placed) -> None:
        """Stop what a start the Hub gave up on (or stopped) started, once it returns; logged."""
        name = self.access.log_name
        try:
            reply, _ = await future
            pid, start_time = reply.data.get("pid"), reply.data.get("start_time")
            if reply.exit_code == remote.ExitCode.OK and pid:
                self.log.warning(
                    "Stopping %s: it finished starting after the Hub gave up on it or stopped it", name
                )
                await self.access.call(placed.address, placed.login, self.stop_call(pid, start_time))
        except Exception as e:  # noqa: BLE001 - a background clean-up logs whatever failed
            self.log.error("Could not clean up the late start of %s: %s", name, self.access.explain(e))

    async def check(self, placed: Placed, process: ServerProcess) -> remote.Reply:
        """check_pid.sh's reply: is the server still running? (RemoteError on the way)"""
        call = calls.check_call(process.pid, process.start_time, self.config.ssh_command_timeout)
        return await self.access.call(placed.address, placed.login, call)

    async def stop(self, placed: Placed, process: ServerProcess, now: bool = False) -> remote.Reply:
        """stop.sh's reply (RemoteError on the way; StopFailed, logged, if it could not stop it)."""
        call = self.stop_call(process.pid, process.start_time, now)
        reply = await self.access.call(placed.address, placed.login, call)
        if reply.exit_code != remote.ExitCode.OK:
            self.log.error(
                "Cannot stop %s (pid %d on %s): stop.sh failed (exit code %d): %s. It may still be "
                "running there.",
                self.access.log_name, process.pid, placed.node, reply.exit_code, reply.stderr,
            )  # fmt: skip
            raise StopFailed(
                f"Your server on {placed.node} could not be stopped and may still be running there; "
                f"{remote.TOLD}"
            )
        return reply

    def stop_call(self, pid, start_time, now=False) -> remote.ScriptCall:
        config = self.config
        return calls.stop_call(
            pid, start_time, self.server_dir,
            config.term_timeout, config.kill_timeout, config.ssh_command_timeout, now,
        )  # fmt: skip
