"""What all spawners of a Hub process share: threads, SSH connections, caches.

Each resource is keyed by the settings it was made with, so a spawner with
other settings (another ``ssh_threads``, ``ssh_idle_timeout``) gets its own
rather than whichever the first spawner asked for. :func:`close` ends them
all: it runs at the Hub's exit, and tests call it to start afresh.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from . import remote
from .nodes import Node, parse_nodelist
from .status import SlurmView, StatusCache


class SharedResources:
    """The thread pools, SSH connection pools and caches of one Hub process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executors: dict[int, ThreadPoolExecutor] = {}
        self._pools: dict[tuple[float, int], remote.ConnectionPool] = {}
        self._nodes: dict[str, list[Node]] = {}
        self.status = StatusCache()
        self.partitions = StatusCache(unknown=lambda error: SlurmView(error=error))
        # How pools open connections (tests put a fake SSH here before any spawner runs).
        self.opener: remote.pool.Opener | None = None

    def executor(self, threads: int) -> ThreadPoolExecutor:
        """The worker threads for SSH operations, *threads* of them."""
        with self._lock:
            if threads not in self._executors:
                self._executors[threads] = ThreadPoolExecutor(threads, thread_name_prefix="rss-ssh")
            return self._executors[threads]

    def pool(self, idle_timeout: float, keepalive: int) -> remote.ConnectionPool:
        """The SSH connections kept with these settings."""
        key = (idle_timeout, keepalive)
        with self._lock:
            if key not in self._pools:
                self._pools[key] = remote.ConnectionPool(idle_timeout, keepalive, opener=self.opener)
            return self._pools[key]

    def nodes(self, nodelist: str, log: logging.Logger) -> list[Node]:
        """*nodelist* parsed, names resolved once (blocking: call it in a thread)."""
        with self._lock:
            if nodelist not in self._nodes:
                nodes, warnings = parse_nodelist(nodelist)
                for warning in warnings:
                    log.warning("RemoteSingularitySpawner: %s", warning)
                if not nodes:
                    log.error(
                        "RemoteSingularitySpawner: no valid node in nodelist %r: nobody can start a server",
                        nodelist,
                    )
                self._nodes[nodelist] = nodes
            return self._nodes[nodelist]

    def connections_opened(self) -> int:
        """SSH connections opened so far by all pools (for logs and benchmarks)."""
        with self._lock:
            return sum(pool.opened for pool in self._pools.values())

    def channels_opened(self) -> int:
        """SSH channels (one per command) opened so far by all pools."""
        with self._lock:
            return sum(pool.channels for pool in self._pools.values())

    def close(self) -> None:
        """Close every connection, end the threads, forget the caches."""
        with self._lock:
            pools, executors = list(self._pools.values()), list(self._executors.values())
            self._pools.clear()
            self._executors.clear()
            self._nodes.clear()
            self.status = StatusCache()
            self.partitions = StatusCache(unknown=lambda error: SlurmView(error=error))
        for pool in pools:
            pool.close_all()
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)


# Clean-ups that outlive the coroutine that started them (asyncio keeps only weak
# references to tasks: one nobody holds may be collected before it is done).
_background_tasks: set[asyncio.Task] = set()


def in_background(coroutine) -> None:
    """Run *coroutine* to its end on the event loop, whatever happens to its caller."""
    task = asyncio.ensure_future(coroutine)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


@functools.lru_cache(maxsize=8)
def load_bundle(directory: str) -> remote.ScriptBundle:
    """The scripts in *directory*, read once per Hub process (not on every poll)."""
    return remote.ScriptBundle.load(directory)


shared = SharedResources()
atexit.register(shared.close)
