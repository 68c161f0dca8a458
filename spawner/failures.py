"""Failures a user reads: one sentence naming the node and the cause, shown alone.

JupyterHub shows a SpawnException's ``jupyterhub_message`` as it is on the
form, the spawn page and in REST replies (a 400, not a bare 500).
"""

from __future__ import annotations

import logging

from tornado import web

try:
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub < 6

    class SpawnException(web.HTTPError):
        """A spawn failure with a message for the user (JupyterHub 5 shape)."""

        def __init__(self, message, *, reason, status_code=400, **_):
            super().__init__(status_code, "%s", message, reason=reason)


class Failures:
    """Makes the SpawnExceptions of one spawner, each logged once with its name."""

    def __init__(self, log: logging.Logger, log_name: str) -> None:
        self.log = log
        self.log_name = log_name

    def __call__(self, message: str, reason: str) -> SpawnException:
        """A SpawnException whose message is shown alone (form, spawn page, REST)."""
        self.log.error("Spawn of %s failed: %s", self.log_name, message)
        error = SpawnException(message, reason=reason)
        error.jupyterhub_message = message
        return error


class StopFailed(RuntimeError):
    """A server could not be stopped; the message is the user's sentence (the details are logged)."""
