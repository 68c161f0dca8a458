"""What can go wrong on the way to a node or on it, and the SSH layer's fallback logger."""

from __future__ import annotations

import logging

# Callers pass their own logger (the spawner passes the Hub's); this one is
# the fallback for use outside JupyterHub.
default_log = logging.getLogger("remotesingularityspawner.remote")


# The end of a user's sentence whose details and fix are in the Hub's log.
TOLD = "the administrators have been told"


class RemoteError(Exception):
    """Something went wrong on the way to the node or on it.

    ``str(error)`` is the whole story, for the Hub's log and the admin command:
    paths, modes, the exception and the fix. *for_user* is the sentence a user
    reads (default: the same), without what only the administrators should see
    or can act on.
    """

    def __init__(self, message: str = "", for_user: str | None = None) -> None:
        super().__init__(message)
        self.for_user = message if for_user is None else for_user


class ConnectError(RemoteError):
    """The node could not be reached (network, sshd down, timeout)."""


class HostKeyError(RemoteError):
    """The node's host key is unknown or has changed: the spawn is refused."""


class IdentityError(RemoteError):
    """The user's private key is missing, unreadable or unusable, or login failed."""


class CommandTimeout(RemoteError):
    """The node did not finish the command within its timeout."""
