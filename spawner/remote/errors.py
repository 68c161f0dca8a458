"""What can go wrong on the way to a node or on it, and the SSH layer's fallback logger."""

from __future__ import annotations

import logging

# Callers pass their own logger (the spawner passes the Hub's); this one is
# the fallback for use outside JupyterHub.
default_log = logging.getLogger("remotesingularityspawner.remote")


class RemoteError(Exception):
    """Something went wrong on the way to the node or on it."""


class ConnectError(RemoteError):
    """The node could not be reached (network, sshd down, timeout)."""


class HostKeyError(RemoteError):
    """The node's host key is unknown or has changed: the spawn is refused."""


class IdentityError(RemoteError):
    """The user's private key is missing, unreadable or unusable, or login failed."""


class CommandTimeout(RemoteError):
    """The node did not finish the command within its timeout."""
