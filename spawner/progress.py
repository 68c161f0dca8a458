"""The steps of a start, as JupyterHub's progress events for the spawn page.

Steps are added on the event loop (:meth:`Progress.report`) or from a worker
thread through :meth:`Progress.reporter`; any number of listeners read them
(:meth:`Progress.events`), a late one from the first step on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable


class _Log:
    """The events of one start (event loop only)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.changed = asyncio.Event()

    def add(self, percent: int, message: str) -> None:
        # Percentages only rise (a port retry reports "starting" again).
        if self.events:
            percent = max(percent, self.events[-1]["progress"])
        self.events.append({"progress": percent, "message": message})
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Progress:
    """The progress of one spawner's starts; a new start begins afresh."""

    def __init__(self) -> None:
        self._log: _Log | None = None

    def restart(self) -> None:
        """Begin a new start's steps (unless none were reported since the last restart)."""
        if self._log is None or self._log.events:
            self._new()

    def clear(self) -> None:
        self._new()

    def _new(self) -> _Log:
        old, self._log = self._log, _Log()
        if old is not None:
            old.wake()  # its listeners move on to the new log
        return self._log

    def report(self, percent: int, message: str) -> None:
        """Add a step (event loop only)."""
        (self._log or self._new()).add(percent, message)

    def reporter(self) -> Callable[[int, str], None]:
        """A callback for worker threads that hands each step to the event loop."""
        loop = asyncio.get_running_loop()

        def report(percent: int, message: str) -> None:
            loop.call_soon_threadsafe(self.report, percent, message)

        return report

    async def events(self) -> AsyncIterator[dict]:
        """The steps of the start under way, replayed from the first to a late listener."""
        log, seen = None, 0
        while True:
            current = self._log or self._new()
            if current is not log:
                log, seen = current, 0
            if seen < len(log.events):
                # One at a time: more may arrive while the listener has this one.
                seen += 1
                yield dict(log.events[seen - 1])
                continue
            await log.changed.wait()
