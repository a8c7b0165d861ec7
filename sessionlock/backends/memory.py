"""``memory://``: sessions serialized within one process only.

    SessionLockMiddleware(app, backend="memory://")

The per-process FIFO queue above every backend already excludes threads and tasks of this
process, so the memory backend's lease is free. It is right for one worker process (uvicorn
with one worker, gunicorn ``-w 1 --threads N``, waitress); with several worker processes use
``file://`` (one host) or ``redis://`` (many hosts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import ConfigurationError
from .base import Backend, Lease

__all__ = ["MemoryBackend", "from_url", "normalize"]


class MemoryBackend(Backend):
    shared = False

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[str, float | None]] = {}
        self._mutex = threading.Lock()
        self._next_sweep = 1024

    def try_acquire(self, key: str) -> Lease:
        return Lease(key)

    def acquire(self, key: str, timeout: float | None) -> Lease:
        return Lease(key)

    async def acquire_async(self, key: str, timeout: float | None) -> Lease:
        return Lease(key)

    def release(self, lease: Lease) -> None:
        pass

    def get(self, key: str) -> str | None:
        with self._mutex:
            item = self._values.get(key)
            if item is None:
                return None
            value, expires = item
            if expires is not None and expires <= self._clock():
                del self._values[key]
                return None
            return value

    def set(self, key: str, value: str, ttl: float | None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        with self._mutex:
            self._purge_expired()
            self._values[key] = (value, expires)

    def delete(self, key: str) -> None:
        with self._mutex:
            self._values.pop(key, None)

    def __len__(self) -> int:
        """Stored values not yet purged (for tests and benchmarks)."""
        return len(self._values)

    def _purge_expired(self) -> None:
        # Amortized: a full sweep only when the table doubled since the last one.
        if len(self._values) < self._next_sweep:
            return
        now = self._clock()
        for key in [k for k, (_, exp) in self._values.items() if exp is not None and exp <= now]:
            del self._values[key]
        self._next_sweep = max(1024, 2 * len(self._values))


def normalize(url: str) -> str:
    """The one spelling of this process's memory backend (``memory://``, ``memory:///``)."""
    if url.rstrip("/") != "memory:":
        raise ConfigurationError(f"memory:// takes no host, path or options, got {url!r}")
    return "memory://"


def from_url(url: str) -> MemoryBackend:
    """A new memory backend (:func:`sessionlock.backends.from_url` shares one per process)."""
    normalize(url)
    return MemoryBackend()
