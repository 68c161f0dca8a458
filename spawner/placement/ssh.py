"""placement = "ssh": the user picks a node of ``nodelist``; the server is started there over SSH.

The form shows each node with its status (``node_status.sh``, run as the
user on all nodes at once in worker threads, cached: node_status.py). The
choice, from the form or the REST API, is validated (request.py) before any
connection; a node the form showed as unreachable is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import jinja2

from .. import calls, remote
from ..pages import page_templates
from ..request import Bind, OptionsError, options_from_form, validate_user_options
from . import Placed, Placement
from .node_status import NodeStatus
from .nodes import Node


@dataclass(frozen=True)
class NodeRequest:
    """The user's request with placement ssh: a node and extra binds."""

    node: Node
    binds: tuple[Bind, ...] = ()


def render_form(
    nodes: list[Node],
    statuses: list[NodeStatus | None],
    gpu_nodes,
    default_binds: str,
    templates: jinja2.Environment | None = None,
) -> str:
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
    return (
        (templates or page_templates())
        .get_template("options_form.html")
        .render(
            choices=choices,
            selected=selected,
            any_gpu=any(c["gpu"] for c in choices),
            default_binds=default_binds,
        )
    )


class SSHPlacement(Placement):
    """The user's choice of a node: the valid nodes, their status, the choice checked."""

    async def render_form(self) -> str:
        nodes = await self.usable_nodes()
        statuses = await self.node_statuses(nodes)
        config = self.config
        return render_form(
            nodes, statuses, config.gpu_nodes, config.default_bind_path, self.resources.templates
        )

    def options_from_form(self, formdata) -> dict:
        return options_from_form(formdata)

    async def validate(self, user_options) -> NodeRequest:
        """The chosen node and binds; SpawnException (400) naming a bad value."""
        nodes = await self.usable_nodes()
        try:
            options = validate_user_options(
                user_options, [n.label for n in nodes], {n.address: n.label for n in nodes}
            )
        except OptionsError as e:
            raise self.fail(f"Cannot start your server: {e}", "options") from None
        node = next(n for n in nodes if n.label == options.host)
        status = self.cached_status(node)
        if status is not None and not status.reachable:
            others = [n.label for n in nodes if n is not node]
            raise self.fail(
                f"Cannot start your server: node {node.label} is unreachable ({status.error})."
                + (f" Please choose another node ({', '.join(others)})." if others else ""),
                "unreachable",
            )
        return NodeRequest(node, options.binds)

    def node_before_start(self, request: NodeRequest) -> Node:
        return request.node

    async def place(self, request: NodeRequest, login, steps, deadline) -> Placed:
        node = request.node
        return Placed(node.label, node.address, login, gpu=node.label in self.config.gpu_nodes)

    # --- the nodes' status, for the form ------------------------------------------------

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
        return await self.for_form(self.resources.status, key, self._fetch_status, node, key[1])

    def _status_key(self, node: Node) -> tuple[str, str] | None:
        try:
            return (node.address, self.access.login.name())
        except OptionsError:
            return None

    def cached_status(self, node: Node) -> NodeStatus | None:
        """The node's status as the form showed it, if still fresh."""
        key = self._status_key(node)
        return None if key is None else self.resources.status.fresh(key, self.config.node_status_ttl)

    def _fetch_status(self, node: Node, login: str) -> NodeStatus:
        """Blocking: run node_status.sh on *node* as *login*."""
        try:
            reply = self.ask_for_form(node.address, login, calls.status_call(self.config.node_status_timeout))
        except remote.RemoteError as e:
            self.log.warning("Node %s is unreachable for %s: %s", node.label, login, e)
            return NodeStatus(reachable=False, error=e.for_user)
        if reply.exit_code != remote.ExitCode.OK:
            self.log.warning(
                "node_status.sh failed on %s (exit code %d): %s", node.label, reply.exit_code, reply.stderr
            )
            return NodeStatus(reachable=True)
        return NodeStatus.from_reply(reply.data)
