"""What all spawners of a Hub process share: threads, SSH connections, caches, templates.

One :class:`HubResources` per Hub process, made when the first spawner needs
it and closed when the Hub exits; the spawner passes it to whichever part
needs it. Each pool is keyed by the settings it was made with, so a spawner
with other settings (another ``ssh_threads``, ``ssh_idle_timeout``) gets its
own rather than whichever the first spawner asked for.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from . import remote
from .pages import page_templates
from .placement.node_status import NodeStatus, SlurmView, StatusCache
from .placement.nodes import Node, parse_nodelist


class HubResources:
    """The thread pools, SSH connection pools, caches and templates of one Hub process.

    *opener* makes SSH connections (tests give a fake one); None: remote.connect.
    """

    _current: ClassVar[HubResources | None] = None
    _current_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, opener: remote.pool.Opener | None = None) -> None:
        self.opener = opener
        self._lock = threading.Lock()
        self._executors: dict[int, ThreadPoolExecutor] = {}
        self._pools: dict[tuple[float, int], remote.ConnectionPool] = {}
        self._nodes: dict[str, list[Node]] = {}
        self._bundles: dict[str, remote.ScriptBundle] = {}
        self._packaged_scripts = str(remote.packaged_scripts_dir())
        self.remote_caches = remote.Caches()
        self.status = StatusCache(unknown=lambda error: NodeStatus(reachable=False, error=error))
        self.partitions = StatusCache(unknown=lambda error: SlurmView(error=error))
        self.templates = page_templates()
        # Clean-ups that outlive the coroutine that started them (asyncio keeps only weak
        # references to tasks: one nobody holds may be collected before it is done).
        self._background: set[asyncio.Task] = set()
        self._told: set[str] = set()  # what the administrators were told in the log

    def tell_admins(self, log: logging.Logger, story: str) -> None:
        """Log *story* (a failure's details and fix) as an error, once per Hub process."""
        with self._lock:
            if story in self._told:
                return
            if len(self._told) >= 10_000:  # bounded: a story told long ago may be told again
                self._told.clear()
            self._told.add(story)
        log.error("%s", story)

    @classmethod
    def current(cls) -> HubResources:
        """The Hub process's resources: made on first use, closed when the process exits."""
        with cls._current_lock:
            if cls._current is None:
                cls._current = cls()
                atexit.register(cls._current.close)
            return cls._current

    @classmethod
    def replace(cls, resources: HubResources | None) -> None:
        """Close the current resources and use *resources* from now on (tests start afresh)."""
        with cls._current_lock:
            old, cls._current = cls._current, resources
        if old is not None:
            old.close()

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
                self._pools[key] = remote.ConnectionPool(
                    idle_timeout, keepalive, opener=self.opener, caches=self.remote_caches
                )
            return self._pools[key]

    def bundle(self, directory: str = "") -> remote.ScriptBundle:
        """The scripts in *directory* (default: the package's), read once per Hub process (not
        on every poll)."""
        directory = directory or self._packaged_scripts
        with self._lock:
            if directory not in self._bundles:
                self._bundles[directory] = remote.ScriptBundle.load(directory)
            return self._bundles[directory]

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

    def in_background(self, coroutine) -> None:
        """Run *coroutine* to its end on the event loop, whatever happens to its caller."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def connections_opened(self) -> int:
        """SSH connections opened so far by all pools (for logs and benchmarks)."""
        with self._lock:
            return sum(pool.opened for pool in self._pools.values())

    def channels_opened(self) -> int:
        """SSH channels (one per command) opened so far by all pools."""
        with self._lock:
            return sum(pool.channels for pool in self._pools.values())

    def close(self) -> None:
        """Close every connection and end the threads."""
        with self._lock:
            pools, executors = list(self._pools.values()), list(self._executors.values())
            self._pools.clear()
            self._executors.clear()
        for pool in pools:
            pool.close_all()
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
