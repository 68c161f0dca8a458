"""An API endpoint loaded into the benchmark's Hub only (see tests/bench.py).

``POST /hub/api/bench/poll-round`` (admin) polls every active server of the
Hub at once, as the Hub's periodic checks do, and answers how long the round
took, the Hub's CPU time meanwhile (all its threads: the event loop and the
SSH workers), how many servers answered "running", and how many SSH
connections and channels the spawner's pool opened meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time

from jupyterhub.apihandlers.base import APIHandler
from tornado import web


def _ssh_opened() -> tuple[int, int]:
    """SSH connections and channels the spawner opened so far (none with another spawner)."""
    try:
        from remotesingularityspawner.hub_resources import HubResources  # noqa: PLC0415 - only this spawner
    except ImportError:
        return 0, 0
    resources = HubResources.current()
    return resources.connections_opened(), resources.channels_opened()


class PollRoundHandler(APIHandler):
    async def post(self):
        if "admin:servers" not in self.expanded_scopes:
            raise web.HTTPError(403, "the poll round needs the admin:servers scope")
        spawners = [s for user in self.users.values() for s in user.spawners.values() if s.active]
        opened = _ssh_opened()
        started, cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(s.poll() for s in spawners))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        self.write(
            json.dumps(
                {
                    "servers": len(spawners),
                    "running": sum(r is None for r in results),
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "ssh_connections_opened": _ssh_opened()[0] - opened[0],
                    "ssh_channels_opened": _ssh_opened()[1] - opened[1],
                }
            )
        )


HANDLERS = [(r"/api/bench/poll-round", PollRoundHandler)]
