"""What the form shows of each node (from ``node_status.sh``), and a cache of it.

The form asks every node at once, in threads, each for at most
``node_status_timeout``; answers are reused for ``node_status_ttl``, and a
node that did not answer in time is refused as the form showed it until its
late answer arrives. One cache per Hub process (see resources.py), keyed by
(node address, login): a status check is a login as the user.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

StatusKey = tuple[str, str]


@dataclass(frozen=True)
class NodeStatus:
    """What the spawn form tells about a node (from ``node_status.sh``)."""

    reachable: bool
    load: float | None = None
    cpus: int | None = None
    mem_available_kib: int | None = None
    servers: int | None = None
    error: str = ""

    @classmethod
    def from_reply(cls, data: dict) -> NodeStatus:
        """The status from the script's JSON reply; fields that make no sense are left out."""

        def number(key, kind):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                return None
            return kind(value)

        return cls(
            reachable=True,
            load=number("load", float),
            cpus=number("cpus", int),
            mem_available_kib=number("mem_available_kib", int),
            servers=number("servers", int),
        )

    def summary(self) -> str:
        """A few words for a person, e.g. ``load 0.31, 20.1 GiB free, 2 servers``."""
        if not self.reachable:
            return "unreachable"
        parts = []
        if self.load is not None:
            parts.append(f"load {self.load:.2f}" + (f" on {self.cpus} CPUs" if self.cpus else ""))
        if self.mem_available_kib is not None:
            parts.append(f"{self.mem_available_kib / 2**20:.1f} GiB free")
        if self.servers is not None:
            parts.append(f"{self.servers} server{'' if self.servers == 1 else 's'}")
        return ", ".join(parts) or "status unknown"


@dataclass(frozen=True)
class SlurmView:
    """placement slurm: the partitions sinfo showed a user, or why they could not be asked."""

    partitions: dict = field(default_factory=dict)  # name -> slurm_options.Partition
    error: str = ""


class StatusCache:
    """Node statuses by (address, login) (or what else is fetched per key, e.g. the
    Slurm partitions a user sees), each with the time it was learnt.

    *clock* is injectable (tests); a slow node is asked once, however many
    forms open meanwhile.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        unknown: Callable[[str], Any] = lambda error: NodeStatus(reachable=False, error=error),
    ) -> None:
        self.clock = clock
        # What a fetch that failed or did not answer in time gives, from its error.
        self.unknown = unknown
        self._lock = threading.Lock()
        self._known: dict[StatusKey, tuple[float, NodeStatus]] = {}
        self._asking: dict[StatusKey, Future] = {}

    def fresh(self, key: StatusKey, ttl: float) -> NodeStatus | None:
        """The status learnt within *ttl* seconds, if any."""
        with self._lock:
            known = self._known.get(key)
        if known is None or self.clock() - known[0] > ttl:
            return None
        return known[1]

    def remember(self, key: StatusKey, status: NodeStatus) -> None:
        with self._lock:
            self._known[key] = (self.clock(), status)

    async def get(
        self,
        key: StatusKey,
        fetch: Callable[[], NodeStatus],
        executor: Executor,
        timeout: float,
        ttl: float,
    ) -> NodeStatus:
        """The fresh status of *key*, else *fetch* it in *executor*, waiting at most *timeout*."""
        known = self.fresh(key, ttl)
        if known is not None:
            return known
        with self._lock:
            asking = self._asking.get(key)
            new = asking is None
            if new:
                asking = executor.submit(fetch)
                self._asking[key] = asking
        if new:
            # Outside the lock: a fetch already done runs the callback right here.
            asking.add_done_callback(lambda done: self._store(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(asking)), timeout)
        except asyncio.TimeoutError:
            status = self.unknown(f"no answer within {timeout:g} s")
            with self._lock:
                # Refused as the form showed it, until the late answer replaces this.
                if not asking.done():
                    self._known[key] = (self.clock(), status)
            return status

    def _store(self, key: StatusKey, done: Future) -> None:
        """Keep a finished fetch's answer (runs in the worker thread)."""
        error = done.exception()
        status = done.result() if error is None else self.unknown(str(error))
        with self._lock:
            self._known[key] = (self.clock(), status)
            self._asking.pop(key, None)
