"""``memory://``: sessions serialized within one process only.

    SessionLockMiddleware(app, backend="memory://")

The per-process FIFO queue above every backend already excludes threads and tasks of this
process, so the memory backend's lease is free. It is right for one worker process (uvicorn
with one worker, gunicorn ``-w 1 --threads N``, waitress); with several worker processes use
``file://`` (one host).

Bounded values: at most ``max_values`` (10 000 by default) are kept; a ``set`` beyond that
forgets the oldest written, and removes up to 4 expired ones at the front of that order, so a
flood of new identities costs a bounded heap and a bounded amount of work per ``set``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import ConfigurationError
from .base import DEFAULT_MAX_VALUES, Backend, Lease, check_max_values

__all__ = ["MemoryBackend", "from_url", "normalize"]

_EXPIRE_PER_SET = 4  # expired values a set may remove, at most: bounded work per request


class MemoryBackend(Backend):
    shared = False
    inline_records = True  # a dict: nothing to wait for

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        self._clock = clock
        self.max_values = check_max_values(max_values)
        # Oldest written first: a set moves its key to the end.
        self._values: dict[str, tuple[str, float | None]] = {}
        self._mutex = threading.Lock()

    # Nothing to exclude beyond this process: Core's in-process queue does it all.
    def try_acquire(self, key: str, *, shared: bool = False) -> Lease:
        return Lease(key, shared=shared)

    def acquire(self, key: str, timeout: float | None, *, shared: bool = False) -> Lease:
        return Lease(key, shared=shared)

    async def acquire_async(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> Lease:
        return Lease(key, shared=shared)

    def release(self, lease: Lease) -> None:
        pass

    def get(self, key: str) -> str | None:
        mutex = self._mutex
        mutex.acquire()  # by hand: cookie tracking loads a record on every request
        try:
            item = self._values.get(key)
            if item is None:
                return None
            value, expires = item
            if expires is not None and expires <= self._clock():
                del self._values[key]
                return None
            return value
        finally:
            mutex.release()

    def set(self, key: str, value: str, ttl: float | None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        with self._mutex:
            self._values.pop(key, None)
            self._values[key] = (value, expires)
            self._trim()

    def delete(self, key: str) -> None:
        with self._mutex:
            self._values.pop(key, None)

    def __len__(self) -> int:
        """Stored values not yet purged (for tests and benchmarks)."""
        return len(self._values)

    def _trim(self) -> None:
        """A few expired values at the front go, then the oldest beyond the cap (mutex held)."""
        now = self._clock()
        for _ in range(min(_EXPIRE_PER_SET, len(self._values))):
            oldest = next(iter(self._values))
            expires = self._values[oldest][1]
            if expires is None or expires > now:
                break
            del self._values[oldest]
        while len(self._values) > self.max_values:
            del self._values[next(iter(self._values))]


def normalize(url: str) -> str:
    """The one spelling of this process's memory backend (``memory://``, ``memory:///``)."""
    if url.rstrip("/") != "memory:":
        raise ConfigurationError(f"memory:// takes no host, path or options, got {url!r}")
    return "memory://"


def from_url(url: str) -> MemoryBackend:
    """A new memory backend (:func:`sessionlock.backends.from_url` shares one per process)."""
    normalize(url)
    return MemoryBackend()
