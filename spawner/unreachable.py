"""What a poll concludes when the server's node cannot be asked over SSH.

First the server's own port: a node that refuses connections there has no
server any more (it rebooted or crashed); a port that accepts them means only
sshd is down or restarting. Only when neither answers (timeouts, no route)
does ``poll_grace_period`` run, so a short network outage stops nobody's
server.
"""

from __future__ import annotations

import logging

from .node_access import NodeAccess
from .placement import Placed


class PollGrace:
    """The grace period of one server whose node went silent.

    *config*: the spawner, for its configuration (traits), its clock and its
    port probe only.
    """

    def __init__(self, config, access: NodeAccess, log: logging.Logger, log_name: str) -> None:
        self.config = config
        self.access = access
        self.log = log
        self.log_name = log_name
        self.since: float | None = None  # when the node was first found silent

    def reset(self) -> None:
        """The node answered (or a new server started)."""
        self.since = None

    async def verdict(self, placed: Placed, port: int, error: str) -> int | None:
        """None: still reported running; 1: the server is gone."""
        config, name = self.config, self.log_name
        listening = None
        if port:
            probe = (placed.address, port, config.ssh_connect_timeout)
            listening = await self.access.in_thread(config.probe_port, *probe)
        if listening is False:
            self.log.warning(
                "Cannot check %s on %s (%s) and %s:%d refuses connections: the server is gone",
                name, placed.node, error, placed.address, port,
            )  # fmt: skip
            return 1
        if listening:
            self.log.warning(
                "Cannot check %s on %s (%s) but its port %d accepts connections: still running",
                name, placed.node, error, port,
            )  # fmt: skip
            self.since = None
            return None
        now = config.clock()
        if self.since is None:
            self.since = now
        waited = now - self.since
        if waited < config.poll_grace_period:
            self.log.warning(
                "Cannot check %s on %s (%s); still reported running (%.0fs of %.0fs grace)",
                name, placed.node, error, waited, config.poll_grace_period,
            )  # fmt: skip
            return None
        self.log.error(
            "Cannot check %s on %s for %.0fs (%s): considering it stopped", name, placed.node, waited, error
        )
        return 1
