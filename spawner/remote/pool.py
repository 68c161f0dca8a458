"""SSH connections kept open per user and node, shared by all of a Hub's spawners."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import fabric

from .ssh import Caches, Target, connect, default_log

Opener = Callable[[Target, logging.Logger, Caches], fabric.Connection]
SWEEP_INTERVAL = 5.0  # seconds between two looks for idle or dead connections, at most
# Logins in progress to one node at once, at most: sshd's MaxStartups (10 by default)
# drops unauthenticated connections beyond 10, as a Hub restart with many users on a node
# would make; the others wait their turn.
LOGINS_PER_NODE = 8


class Pooled:
    """One open connection in a :class:`ConnectionPool`, with its guards."""

    def __init__(self, key: Target, conn: fabric.Connection, max_sessions: int) -> None:
        self.key = key
        self.conn = conn
        # sshd refuses more than MaxSessions (default 10) channels per connection.
        self.sessions = threading.BoundedSemaphore(max_sessions)
        self.borrowed = 0
        self.last_used = time.monotonic()
        self.fresh = True  # not yet used for a command
        self.discarded = False

    def active(self) -> bool:
        transport = self.conn.transport
        return transport is not None and transport.is_active()


class ConnectionPool:
    """SSH connections kept open per :class:`Target` (node and user) and shared.

    Any number of threads may borrow the same connection: each command gets
    its own channel (at most *max_sessions* at once per connection). A
    connection is closed when it has been unused for *idle_timeout* seconds
    or found dead (checked when the pool is used, at most every
    ``SWEEP_INTERVAL`` seconds: a sweep looks at every connection, and a poll
    round of N servers would otherwise look N times at N); keepalives every
    *keepalive* seconds notice a vanished peer. *opener* makes a connection
    (tests give a fake one); *caches* are what logins keep between them.
    """

    def __init__(
        self,
        idle_timeout: float = 120.0,
        keepalive: int = 30,
        max_sessions: int = 8,
        opener: Opener | None = None,
        caches: Caches | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.max_sessions = max_sessions
        self._open = opener if opener is not None else connect
        self.caches = caches if caches is not None else Caches()
        self._lock = threading.Lock()
        self._entries: dict[Target, Pooled] = {}
        self._connecting: dict[Target, threading.Lock] = {}
        self._logins: dict[str, threading.BoundedSemaphore] = {}
        self._next_sweep = 0.0
        self.opened = 0  # connections opened so far (for logs and benchmarks)
        self.channels = 0  # commands run (one channel each) so far, ditto
        # Where the scripts of a version run from, per (target, user dir, node dir):
        # found once per pool (see NodeSession), forgotten with it.
        self.script_dirs: dict[tuple[Target, str, str], str] = {}

    def acquire(self, target: Target, log: logging.Logger = default_log) -> Pooled:
        """A live connection for *target*, opened if need be; give it back with release()."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + min(self.idle_timeout, SWEEP_INTERVAL)
            self.close_idle()
        with self._lock:
            connecting = self._connecting.setdefault(target, threading.Lock())
            logins = self._logins.setdefault(target.host, threading.BoundedSemaphore(LOGINS_PER_NODE))
        # One thread connects; the others for the same target wait and share.
        with connecting:
            with self._lock:
                entry = self._entries.get(target)
                if entry is not None and entry.active():
                    entry.borrowed += 1
                    return entry
            if entry is not None:
                self.discard(entry)
            with logins:
                conn = self._open(target, log, self.caches)
            transport = conn.transport
            if transport is not None and self.keepalive:
                transport.set_keepalive(self.keepalive)
            entry = Pooled(target, conn, self.max_sessions)
            with self._lock:
                self._entries[target] = entry
                self.opened += 1
                entry.borrowed += 1
            log.debug("opened SSH connection %s", target)
            return entry

    def count_channel(self) -> None:
        with self._lock:
            self.channels += 1

    def release(self, entry: Pooled) -> None:
        with self._lock:
            entry.borrowed -= 1
            entry.last_used = time.monotonic()
            close = entry.discarded and entry.borrowed == 0
        if close:
            _close_quietly(entry.conn)

    def discard(self, entry: Pooled) -> None:
        """Forget a connection that failed; it is closed now, or when the last borrower releases it."""
        with self._lock:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            entry.discarded = True
            close = entry.borrowed == 0
        if close:
            _close_quietly(entry.conn)

    def close_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                e for e in self._entries.values()
                if e.borrowed == 0 and (now - e.last_used > self.idle_timeout or not e.active())
            ]  # fmt: skip
            for entry in idle:
                del self._entries[entry.key]
        for entry in idle:
            _close_quietly(entry.conn)

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            _close_quietly(entry.conn)

    def __len__(self) -> int:
        return len(self._entries)


def _close_quietly(conn: fabric.Connection) -> None:
    # Closing a connection that already broke may fail in any way; it is gone either way.
    with contextlib.suppress(Exception):
        conn.close()
