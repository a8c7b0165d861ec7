"""Threads kept alive to block in the kernel on behalf of waiting requests.

A lock wait across processes has to block a thread in the kernel (a task cannot). Starting
a thread for each wait costs 63-82 µs, as much as the hand-off itself: a helper that finished
its wait lingers for the next one instead (:data:`LINGER` seconds), so a busy session's waits
reuse a handful of threads, and an idle process keeps none.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable

__all__ = ["LINGER", "Helpers"]

LINGER = 10.0  # seconds an idle helper waits for another job before it exits


class Helpers:
    """Runs each job on an idle helper thread, or on a new one if all are busy."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        _all.add(self)

    def _reset(self) -> None:
        # Also in a forked child, where none of the parent's helpers runs.
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        # Helpers waiting for a job, minus jobs queued for them: > 0 means one is free.
        self._idle = 0

    def run(self, job: Callable[[], None]) -> None:
        """Start ``job`` on a helper; it must handle its own errors."""
        with self._mutex:
            free = self._idle > 0
            if free:
                self._idle -= 1
        self._jobs.put(job)
        if not free:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()

    def _serve(self) -> None:
        job = self._jobs.get()
        while True:
            job()
            del job  # nothing of a finished wait stays alive while this helper lingers
            with self._mutex:
                self._idle += 1
            while True:
                try:
                    job = self._jobs.get(timeout=LINGER)
                    break
                except queue.Empty:
                    with self._mutex:
                        if self._idle > 0:  # more helpers wait than jobs are coming: leave
                            self._idle -= 1
                            return
                    # every waiting helper is spoken for: a job is on its way to one of us


_all: weakref.WeakSet[Helpers] = weakref.WeakSet()


def _reset_in_child() -> None:
    for helpers in list(_all):
        helpers._reset()


os.register_at_fork(after_in_child=_reset_in_child)
