"""The way to the nodes for one spawner: scripts run over SSH in worker threads.

The Hub's event loop never waits on SSH: every blocking call goes through
:meth:`NodeAccess.in_thread`, into the thread pool shared by the Hub's
spawners (hub_resources.py). Any failure on the way becomes a sentence for
the user (:meth:`NodeAccess.explain`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from functools import partial

from . import remote
from .hub_resources import HubResources
from .login import LoginMethod


class NodeAccess:
    """Runs node scripts as the user on any node, through the Hub's shared threads and connections.

    *config*: the spawner, for its configuration (traits) only.
    """

    def __init__(
        self, config, resources: HubResources, login: LoginMethod, log: logging.Logger, log_name: str
    ) -> None:
        self.config = config
        self.resources = resources
        self.login = login
        self.log = log
        self.log_name = log_name

    async def in_thread(self, func, *args):
        """*func(*args)* in a worker thread (blocking work: SSH, name resolution, files)."""
        loop = asyncio.get_running_loop()
        executor = self.resources.executor(self.config.ssh_threads)
        return await loop.run_in_executor(executor, partial(func, *args))

    def target(self, address: str, login: str, connect_timeout: float | None = None) -> remote.Target:
        return self.login.target(address, login, connect_timeout)

    async def call(self, address: str, login: str, call: remote.ScriptCall, on_progress=None) -> remote.Reply:
        """Run *call* on *address* as *login*; its reply (RemoteError on the way)."""
        return await self.in_thread(self.call_blocking, self.target(address, login), call, on_progress)

    def call_blocking(self, target: remote.Target, call: remote.ScriptCall, on_progress=None) -> remote.Reply:
        """Blocking: run *call* on *target* (for work already in a worker thread)."""
        return self._with_session(target, remote.NodeSession.call, call, on_progress)

    def start_server(self, address: str, login: str, label: str, call: remote.ScriptCall, report):
        """A future: start_singleuser.sh run on node *label*, its steps relayed to *report*;
        (its reply, the scripts' version)."""
        target = self.target(address, login)

        def start(session: remote.NodeSession):
            report(25, f"connected; preparing the scripts on {label}")
            return session.call(call, on_progress=report), session.version

        return asyncio.ensure_future(self.in_thread(self._with_session, target, start))

    async def put_private(self, address: str, login: str, directory: str, files: Mapping[str, bytes]) -> str:
        """Put *files* into *directory* on the node (0600 in 0700); its absolute path there."""
        target = self.target(address, login)
        return await self.in_thread(
            self._with_session, target, remote.NodeSession.put_private, directory, files
        )

    async def remove_private(self, address: str, login: str, directory: str) -> None:
        target = self.target(address, login)
        await self.in_thread(self._with_session, target, remote.NodeSession.remove_private, directory)

    def _with_session(self, target: remote.Target, action, *args):
        """Blocking: open (or reuse) the connection to *target* and run *action* on it."""
        config = self.config
        bundle = self.resources.bundle(config.scripts_dir)
        pool = self.resources.pool(config.ssh_idle_timeout, config.ssh_keepalive_interval)
        with remote.NodeSession(
            target, bundle, config.remote_state_dir, self.log, pool,
            node_dir=config.node_scripts_dir, command_timeout=config.ssh_command_timeout,
        ) as session:  # fmt: skip
            return action(session, *args)

    def explain(self, error: Exception) -> str:
        """A sentence for the user from any failure on the way to the node. What only the
        administrators should see (paths, modes, the exception, the fix) goes to the Hub's
        log, once for each story rather than at every poll."""
        if isinstance(error, remote.CertificateSettingError):
            self.resources.tell_admins(
                self.log, f"c.RemoteSingularitySpawner.{error.setting}: {error} (for {self.log_name})"
            )
            return error.for_user
        if isinstance(error, remote.RemoteError):
            if error.for_user != str(error):
                self.resources.tell_admins(self.log, f"{self.log_name}: {error}")
            return error.for_user
        self.log.error("Unexpected error for %s", self.log_name, exc_info=error)
        return f"an unexpected error happened on the way to the node; {remote.TOLD}"
