"""The user's choice: the nodes with their status, the options form, the options checked.

The status of each node comes from ``node_status.sh``, run as the user on
all nodes at once in worker threads and cached (status.py). The choice,
from the form or the REST API, is validated (options.py) before any
connection, as JupyterHub's ``apply_user_options`` hook and again by
``start``, which also refuses a node the form showed as unreachable. The
page is a Jinja2 template.
"""

from __future__ import annotations

import asyncio
from functools import partial

import jinja2

from . import calls, remote
from .nodes import Node
from .options import OptionsError, UserOptions, validate_user_options
from .options import options_from_form as ssh_options_from_form
from .resources import shared
from .slurm_options import slurm_options_from_form
from .status import NodeStatus

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("remotesingularityspawner", "templates"),
    autoescape=True,
)


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


class NodeChoice:
    """The user's choice of a node: the valid nodes, their status, the options checked.

    Mixed into RemoteSingularitySpawner; uses its settings and SSH access.
    """

    async def get_nodes(self) -> list[Node]:
        """The valid nodes, parsed (and names resolved) once per node list."""
        return await self._in_thread(shared.nodes, self.nodelist, self.log)

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
            options = validate_user_options(
                user_options, [n.label for n in nodes], {n.address: n.label for n in nodes}
            )
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

    async def node_statuses(self, nodes: list[Node]) -> list[NodeStatus | None]:
        """Each node's status (None: unknown), asked concurrently in threads.

        A node that does not answer within node_status_timeout is shown as
        unreachable; its answer, when it comes, is cached for the next form.
        """
        return list(await asyncio.gather(*(self._node_status(node) for node in nodes)))

    async def _node_status(self, node: Node) -> NodeStatus | None:
        key = self._status_key(node)
        if key is None:
            return None  # a bad login name: start() says why
        fetch = partial(self._fetch_status, node, key[1])
        executor = shared.executor(self.ssh_threads)
        return await shared.status.get(key, fetch, executor, self.node_status_timeout, self.node_status_ttl)

    def _status_key(self, node: Node) -> tuple[str, str] | None:
        try:
            return (node.address, self._login_name())
        except OptionsError:
            return None

    def _cached_status(self, node: Node) -> NodeStatus | None:
        """The node's status as the form showed it, if still fresh."""
        key = self._status_key(node)
        return None if key is None else shared.status.fresh(key, self.node_status_ttl)

    def _fetch_status(self, node: Node, login: str) -> NodeStatus:
        """Blocking: run node_status.sh on *node* as *login*."""
        target = self._target(node.address, login, min(self.ssh_connect_timeout, self.node_status_timeout))
        try:
            call = calls.status_call(self.node_status_timeout)
            reply = self._with_session(target, remote.NodeSession.call, call)
        except remote.RemoteError as e:
            self.log.warning("Node %s is unreachable for %s: %s", node.label, login, e)
            return NodeStatus(reachable=False, error=str(e))
        if reply.exit_code != remote.ExitCode.OK:
            self.log.warning(
                "node_status.sh failed on %s (exit code %d): %s", node.label, reply.exit_code, reply.stderr
            )
            return NodeStatus(reachable=True)
        return NodeStatus.from_reply(reply.data)


async def render_options_form(spawner: NodeChoice) -> str:
    """The form: each valid node with its status, and a field for extra binds.

    With placement slurm: the partitions and the resources to ask for (slurm.py).
    """
    if spawner.placement == "slurm":
        return await spawner.render_slurm_form()
    nodes = await spawner.usable_nodes()
    statuses = await spawner.node_statuses(nodes)
    return render_form(nodes, statuses, spawner.gpu_nodes, spawner.default_bind_path)


async def apply_user_options(spawner: NodeChoice, user_options) -> None:
    """Refuse bad options before the spawn is scheduled (JupyterHub 5.3+)."""
    if spawner.placement == "slurm":
        await spawner.check_slurm_options(user_options)
    else:
        await spawner.check_options(user_options)


def options_from_form(formdata, spawner=None) -> dict:
    """The form's fields as ``user_options``: the node form's, or the Slurm form's."""
    if spawner is not None and spawner.placement == "slurm":
        return slurm_options_from_form(formdata)
    return ssh_options_from_form(formdata)
