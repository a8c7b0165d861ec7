"""Threads kept alive to block in the kernel on behalf of waiting requests.

A lock wait across processes has to block a thread in the kernel (a task cannot). Starting
a thread for each wait costs 63-82 µs, as much as the hand-off itself: a helper that finished
its wait lingers for the next one instead (:data:`LINGER` seconds), so a busy session's waits
reuse a handful of threads, and an idle process keeps none.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable

__all__ = ["LINGER", "Helpers"]

logger = logging.getLogger("sessionlock")

LINGER = 10.0  # seconds an idle helper waits for another job before it exits


class Helpers:
    """Runs each job on an idle helper thread, or on a new one if all are busy.

    ``most``: the most threads at once (None: no limit); beyond, jobs wait their turn. Jobs
    that block on each other (lock waits whose release another job brings) need no limit.
    """

    def __init__(self, name: str, most: int | None = None) -> None:
        self._name = name
        self._most = most
        self._reset()
        _all.add(self)

    def _reset(self) -> None:
        # Also in a forked child, where none of the parent's helpers runs.
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        # Helpers waiting for a job, minus jobs queued: > 0 means one is free, < 0 that jobs
        # wait for a helper.
        self._idle = 0
        self._threads = 0

    def run(self, job: Callable[[], None]) -> None:
        """Start ``job`` on a helper (or queue it); it must handle its own errors."""
        with self._mutex:
            self._idle -= 1
            start = self._idle < 0 and (self._most is None or self._threads < self._most)
            if start:  # one more helper, waiting for a job from its start
                self._idle += 1
                self._threads += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=LINGER)
            except queue.Empty:
                with self._mutex:
                    if self._idle > 0:  # more helpers wait than jobs are coming: leave
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # every waiting helper is spoken for: a job is on its way
            try:
                job()
            except Exception:  # a job's own bug: said, and the helper lives on (a dead one
                logger.exception("a sessionlock helper job failed")  # would stay counted)
            del job  # nothing of a finished job stays alive while this helper lingers
            with self._mutex:
                self._idle += 1


_all: weakref.WeakSet[Helpers] = weakref.WeakSet()


def _reset_in_child() -> None:
    for helpers in list(_all):
        helpers._reset()


if hasattr(os, "register_at_fork"):  # not on Windows (docs/platforms.md)
    os.register_at_fork(after_in_child=_reset_in_child)
