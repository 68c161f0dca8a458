"""internal_ssl: the server's certificate names the node it runs on; its files go to that node.

With ``c.JupyterHub.internal_ssl`` the Hub and the proxy check the server's
certificate against the node's address. The node is known before the start
with placement ssh (JupyterHub's create_certs/move_certs make and copy the
files then), and only once the job runs with placement slurm (the spawner
makes and copies them in start(), before the server starts). Either way the
files are removed when the server stops or fails to start.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .node_access import NodeAccess
from .placement import Fail
from .placement.nodes import Node

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


async def hub_certs(spawner, create_certs: Callable[[], Awaitable[dict]], alt_names: list[str]) -> dict:
    """JupyterHub's *create_certs* of *spawner*, with *alt_names* after its ssl_alt_names."""
    configured = spawner.ssl_alt_names
    names = configured(spawner) if callable(configured) else configured
    if inspect.isawaitable(names):
        names = await names
    spawner.ssl_alt_names = [*names, *alt_names]
    try:
        return await create_certs()
    finally:
        spawner.ssl_alt_names = configured


@dataclass(frozen=True)
class CertsOnNode:
    """Where a server's TLS files are: the node's address, the login they belong to, the directory."""

    address: str
    login: str
    directory: str


class InternalTLS:
    """A server's TLS files: made for its node, copied there, removed with the server.

    *make_certs(alt_names)*: JupyterHub's create_certs with these names added.
    """

    def __init__(
        self,
        access: NodeAccess,
        make_certs: Callable[[list[str]], Awaitable[dict]],
        server_dir: str,
        fail: Fail,
    ) -> None:
        self.access = access
        self.make_certs = make_certs
        self.server_dir = server_dir
        self.fail = fail
        self.on_node: CertsOnNode | None = None  # state: certs_dir, on the placed node
        self._made: tuple[dict, dict[str, bytes]] | None = None  # create() -> move()

    async def create(self, node: Node) -> dict:
        """Make the key and certificate naming *node*; the Hub's paths of the files."""
        paths = await self.make_certs(node_alt_names(node))
        # Read them now: the Hub writes every server of a user to the same files, and
        # another spawn of this user may rewrite them before move() runs.
        self._made = (paths, read_cert_files(paths))
        return paths

    async def move(self, paths: dict, node: Node, login: str) -> dict:
        """Copy the key, certificate and CA to *node*; their paths there.

        They go to ``<server dir>/certs/`` under the user's home (0600 files in a
        0700 directory).
        """
        if self._made is not None and self._made[0] == paths:
            files = self._made[1]
        else:
            files = await self.access.in_thread(read_cert_files, paths)
        self._made = None
        try:
            directory = await self.access.put_private(node.address, login, f"{self.server_dir}/certs", files)
        except Exception as e:
            message = f"Cannot copy the TLS certificates to {node.label}: {self.access.explain(e)}"
            raise self.fail(message, "ssh") from None
        self.on_node = CertsOnNode(node.address, login, directory)
        return paths_on_node(directory)

    async def install(self, node: Node, login: str) -> dict:
        """Make the files for *node* and copy them there (the node was known only now)."""
        return await self.move(await self.create(node), node, login)

    async def remove(self, where: CertsOnNode | None = None) -> None:
        """Remove the files from their node; logged, never raises."""
        where = where or self.on_node
        if where is None:
            return
        try:
            await self.access.remove_private(where.address, where.login, where.directory)
        except Exception as e:  # noqa: BLE001 - they stay, private to the user; say so
            self.access.log.warning(
                "Could not remove the TLS certificates of %s (%s:%s): %s",
                self.access.log_name, where.address, where.directory, self.access.explain(e),
            )  # fmt: skip
            return
        if self.on_node == where:
            self.on_node = None
