"""Bounded lock files: the files of keys a process stopped using are removed, off the loop.

Releasing only unlocks: a session's next request reuses its file (creating and unlinking a
file costs 10x a lock on a journaled file system). Each process remembers the keys it
released; once more than 256 are idle, or one has been idle 30 s, a short-lived janitor
thread removes them: the backend takes each lock without waiting (skipping keys in use) and
unlinks the file *before* unlocking. If the janitor falls behind, releases made off an event
loop remove the oldest themselves (an unlink would block a loop). So the directory holds the
held keys plus about 1024 idle ones per process at most, whatever the number of sessions
ever seen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

__all__ = ["IdleFiles"]

IDLE_FILES = 256  # lock files a process leaves for keys it used lately, at most
# A lock file unused this long here is removed. Long enough for a session's next click: its
# file keeps the stamp that lets a process trust its cached record.
IDLE_SECONDS = 30.0
LOOK_EVERY = 0.25  # seconds between two looks for idle files by releases
JANITOR = "sessionlock-file-janitor"


class IdleFiles:
    """The lock files this process released, oldest first, and the janitor that removes them.

    Guarded by the backend's mutex, which :meth:`released` and :meth:`forget` expect held:
    a release takes it once for its descriptor and this bookkeeping together.
    ``remove(name)`` locks the file if free, unlinks it, and says whether it did.
    """

    __slots__ = ("_idle", "_mutex", "_next_look", "_remove", "running")

    def __init__(self, mutex: threading.Lock, remove: Callable[[str], bool]) -> None:
        self._mutex = mutex
        self._remove = remove
        self._idle: dict[str, float] = {}  # file name -> when released here, oldest first
        self._next_look = 0.0
        self.running = False  # a janitor thread is at work

    def released(self, name: str, now: float) -> tuple[str | None, bool]:
        """Under the mutex: ``name`` was released at ``now`` (monotonic).

        Returns a file to remove right away (back-pressure: the janitor is behind, and this
        is not an event loop), and whether to :meth:`start` a janitor.
        """
        idle = self._idle
        idle.pop(name, None)
        idle[name] = now  # newest last
        behind = None
        if len(idle) > 4 * IDLE_FILES and asyncio._get_running_loop() is None:
            behind = next(iter(idle))
            del idle[behind]
        # The look itself only when it may be due: not on every release.
        if self.running or not (len(idle) > IDLE_FILES or now >= self._next_look):
            return behind, False
        if len(idle) > IDLE_FILES:
            self.running = True
        else:  # an old one? looked at 4 times a second at most
            self._next_look = now + LOOK_EVERY
            self.running = next(iter(idle.values())) < now - IDLE_SECONDS
        return behind, self.running

    def forget(self, name: str) -> None:
        """Under the mutex: ``name`` is being removed by someone else (the sweep)."""
        self._idle.pop(name, None)

    def start(self) -> None:
        """A janitor thread, after :meth:`released` said so (outside the mutex)."""
        threading.Thread(target=self._run, name=JANITOR, daemon=True).start()

    def _run(self) -> None:
        """Remove the files of keys idle here: the oldest beyond the cap, and the old ones."""
        try:
            now = time.monotonic()
            with self._mutex:
                excess = max(0, len(self._idle) - IDLE_FILES // 2)
                names = [
                    name
                    for index, (name, released) in enumerate(self._idle.items())
                    if index < excess or released < now - IDLE_SECONDS
                ]
                for name in names:
                    del self._idle[name]
            for name in names:
                self._remove(name)
        finally:
            with self._mutex:
                self.running = False
