"""How a spawner reaches its node: login name, SSH target, a session in a worker thread,
and what a poll concludes when the node cannot be asked.

Mixed into RemoteSingularitySpawner. The Hub's event loop never waits on
SSH: every blocking call goes through :meth:`NodeAccess._in_thread`, into the
thread pool shared by the Hub's spawners (resources.py). Any failure on the
way becomes a sentence for the user (:meth:`NodeAccess._explain`).
"""

from __future__ import annotations

import asyncio
import os
from functools import partial

from tornado import web

from . import calls, remote
from .options import OptionsError, check_login_name
from .resources import load_bundle, shared

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6

    class SpawnException(web.HTTPError):
        """A spawn failure with a message for the user (JupyterHub 5 shape)."""

        def __init__(self, message, *, reason, status_code=400, **_):
            super().__init__(status_code, "%s", message, reason=reason)


class NodeAccess:
    """SSH access to the nodes for one spawner, as the user."""

    # Whether the server's port answers when its node cannot be asked (tests set their own).
    probe_port = staticmethod(remote.probe_port)


    async def _in_thread(self, func, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(shared.executor(self.ssh_threads), partial(func, *args))

    async def _on_node(self, target: remote.Target, action, *args):
        """``action(session, *args)`` in a worker thread, with a session on *target*."""
        return await self._in_thread(self._with_session, target, action, *args)

    def _with_session(self, target: remote.Target, action, *args):
        """Blocking: open (or reuse) the connection to *target* and run *action* on it."""
        bundle = load_bundle(self.scripts_dir or str(remote.packaged_scripts_dir()))
        pool = shared.pool(self.ssh_idle_timeout, self.ssh_keepalive_interval)
        with remote.NodeSession(
            target, bundle, self.remote_state_dir, self.log, pool,
            node_dir=self.node_scripts_dir, command_timeout=self.ssh_command_timeout,
        ) as session:  # fmt: skip
            return action(session, *args)

    def _explain(self, error: Exception) -> str:
        """A sentence for the user from any failure on the way to the node."""
        if isinstance(error, remote.CertificateSettingError):
            return f"the Hub is misconfigured: c.RemoteSingularitySpawner.{error.setting}: {error}"
        if isinstance(error, remote.RemoteError):
            return str(error)
        self.log.error("Unexpected error for %s", self._log_name, exc_info=error)
        return f"unexpected error: {type(error).__name__}: {error}"

    def _login_name(self) -> str:
        if callable(self.ssh_username):
            name = self.ssh_username(self)
        else:
            name = self.ssh_username.format(username=self.user.name)
        return check_login_name(name)

    def _login(self) -> str:
        """The login name on the nodes; SpawnException naming it if it is not valid."""
        try:
            return self._login_name()
        except OptionsError as e:
            raise self._fail(f"Cannot start your server: {e}", reason="options") from None

    def _target(self, address: str, login: str, connect_timeout: float | None = None) -> remote.Target:
        home = os.path.join(self.home_path, login)
        fmt = {"home": home, "login": login, "username": self.user.name}
        certificate, key_files, known_hosts = None, self.ssh_key_files, self.known_hosts_files
        if self.ssh_auth == "certificate":
            # No home is read: the Hub may not be able to, and holds no user's secret.
            key_files, known_hosts = [], [p for p in known_hosts if "{home}" not in p]
            certificate = remote.CertificateRequest(
                ca_path=self.ssh_ca_key_file,
                principal=login,
                key_id=remote.key_id(self.user.name, self.name, login),
                validity=self.ssh_certificate_validity,
                source_addresses=tuple(self.ssh_certificate_source_addresses),
            )
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
            key_files=tuple(p.format(**fmt) for p in key_files),
            known_hosts_files=tuple(p.format(**fmt) for p in known_hosts),
            port=self.ssh_port,
            connect_timeout=self.ssh_connect_timeout if connect_timeout is None else connect_timeout,
            verify_host_key=not self.disable_host_key_checking,
            certificate=certificate,
        )

    def _server_dir(self) -> str:
        return calls.server_dir(self.remote_state_dir, self.user.name, self.name)

    def _fail(self, message: str, reason: str) -> SpawnException:
        """A SpawnException whose message is shown alone (form, spawn page, REST)."""
        self.log.error("Spawn of %s failed: %s", self._log_name, message)
        error = SpawnException(message, reason=reason)
        # JupyterHub shows this attribute as it is (else str(), with status and class).
        error.jupyterhub_message = message
        return error

    async def _unreachable(self, error: str):
        """Poll could not ask the node: ask the server's port, else wait out poll_grace_period."""
        listening = None
        if self.port:
            probe = (self.address, self.port, self.ssh_connect_timeout)
            listening = await self._in_thread(self.probe_port, *probe)
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
        now = self.clock()
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
