"""internal_ssl: the server's certificate names its node; its files go to the node.

Pure helpers; the spawner's ``create_certs``/``move_certs`` use them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from . import remote
from .nodes import Node

# The key of JupyterHub's cert_paths -> the file's name on the node.
CERT_FILES = {"keyfile": "server.key", "certfile": "server.crt", "cafile": "ca.crt"}


def read_cert_files(paths: dict) -> dict[str, bytes]:
    """The key, certificate and CA the Hub wrote, by their names on the node."""
    return {name: Path(paths[key]).read_bytes() for key, name in CERT_FILES.items()}


def node_alt_names(node: Node) -> list[str]:
    """The subjectAltName entries naming *node*: its address, and its name if it has one."""
    names = [f"IP:{node.address}"]
    if node.label != node.address:
        names.append(f"DNS:{node.label}")
    return names


def paths_on_node(certs_dir: str) -> dict[str, str]:
    """Where the server finds its files on the node (JupyterHub's cert_paths keys)."""
    return {key: f"{certs_dir}/{name}" for key, name in CERT_FILES.items()}


class InternalTLS:
    """The spawner's internal_ssl hooks: a certificate naming the node, its files on the node.

    Mixed into RemoteSingularitySpawner; uses its node choice and SSH access.
    """

    certs_dir: str  # state: where the files are on the node ("" when none)
    _new_certs: tuple[dict, dict[str, bytes]] | None = None  # read by create_certs for move_certs


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
        self._new_certs = (paths, read_cert_files(paths))
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
            files = await self._in_thread(read_cert_files, paths)
        self._new_certs = None
        node, _ = await self.check_options(self.user_options)
        login = self._login()
        target = self._target(node.address, login)
        where = f"{self._server_dir()}/certs"
        try:
            certs_dir = await self._on_node(target, remote.NodeSession.put_private, where, files)
        except Exception as e:
            message = f"Cannot copy the TLS certificates to {node.label}: {self._explain(e)}"
            raise self._fail(message, reason="ssh") from None
        # Where stop() and a failed start find them (start() sets the same node again).
        self.node, self.address, self.login, self.certs_dir = node.label, node.address, login, certs_dir
        return paths_on_node(certs_dir)

    def _certs_location(self) -> tuple[remote.Target | None, str]:
        if not (self.certs_dir and self.address and self.login):
            return None, ""
        return self._target(self.address, self.login), self.certs_dir

    async def _remove_certs(self, target: remote.Target | None, certs_dir: str) -> None:
        if target is None or not certs_dir:
            return
        try:
            await self._on_node(target, remote.NodeSession.remove_private, certs_dir)
        except Exception as e:  # noqa: BLE001 - they stay, private to the user; say so
            self.log.warning(
                "Could not remove the TLS certificates of %s (%s:%s): %s",
                self._log_name, target.host, certs_dir, self._explain(e),
            )
            return
        if self.certs_dir == certs_dir:
            self.certs_dir = ""

