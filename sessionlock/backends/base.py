"""The small interface every backend implements: a lease per key, and a tiny value store.

Policy (FIFO order, timeouts, queue limits) lives once, above the backends, in
:mod:`sessionlock.queue` and :mod:`sessionlock.core`. Inside one :class:`~sessionlock.core.Core`
only the head of a key's local queue ever calls :meth:`Backend.acquire`. A backend is shared
by every middleware of its URL in the process (:func:`sessionlock.backends.from_url`), so
several Cores may ask it for one key at once. A backend whose lease is ``shared`` excludes
them from each other as it excludes other processes or hosts; the memory backend's free lease
leaves each Core to serialize its own requests, as before the registry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import ConfigurationError
from . import _shared

__all__ = ["DEFAULT_MAX_VALUES", "Backend", "HeldKey", "Lease", "check_max_values"]

logger = logging.getLogger("sessionlock")

#: Values a backend stores at most (per process for memory://, per directory for file://):
#: a flood of new browser identities, each leaving a record, costs bounded memory and disk.
DEFAULT_MAX_VALUES = 10_000


def check_max_values(max_values: int) -> int:
    """``max_values`` if it is a positive int, else ConfigurationError."""
    if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
        raise ConfigurationError(f"max_values must be an int >= 1, got {max_values!r}")
    return max_values


class Lease:
    """Proof that a backend granted ``key``; ``token`` is the backend's own handle.

    ``stamp``: the key's version when the lease was granted (None: the backend keeps none).
    Two leases of a key with equal stamps prove that nobody called :meth:`Backend.mark` for
    it in between, so what a process cached from the first is still current in the second.

    ``fence``: a number that grows with every grant of the key, for the app's own writes
    (:func:`sessionlock.session_fence`); None if the backend keeps none (memory, file).

    ``shared``: a reader's lease (``acquire(..., shared=True)``): other shared leases of the
    key may be held at the same time, an exclusive one may not. A shared lease may
    :meth:`Backend.load` the key's record, never :meth:`Backend.store` or :meth:`Backend.mark`.
    """

    __slots__ = ("fence", "key", "shared", "stamp", "token")

    def __init__(
        self,
        key: str,
        token: Any = None,
        stamp: int | None = None,
        fence: int | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.key = key
        self.token = token
        self.stamp = stamp
        self.fence = fence
        self.shared = shared

    def __repr__(self) -> str:
        return f"Lease({self.key[:8]}...)"


@dataclass(frozen=True)
class HeldKey:
    """A key busy in a shared backend right now, as ``sessionlock held`` lists it.

    ``key``: the keyed hash the backend stores (never a raw session id). ``mode``:
    ``"exclusive"`` (one holder), ``"shared"`` (readers) or ``"free"`` (nobody holds it, and
    someone is in line: a hand-over under way). ``readers``: how many hold it shared, None
    where the backend cannot tell (file://). ``queued``: the processes in the backend's line
    for it; each process's further requests of that key wait behind its own, inside it.
    """

    key: str
    mode: Literal["exclusive", "shared", "free"]
    readers: int | None
    queued: int


class Backend(ABC):
    """Excludes other processes (or hosts) from a key, and stores short notes per key.

    Keys reaching a backend are already keyed hashes (hex), never raw session ids. A backend
    that cannot reach its store (a full or read-only disk, no descriptors left) raises
    :class:`~sessionlock.errors.BackendUnavailable` only, and keeps no memory of it: the next
    call after the store recovers simply works.
    """

    #: Whether the lease excludes other processes. The memory backend's does not, which is
    #: what the gunicorn integration checks before starting more than one worker.
    shared: ClassVar[bool] = True

    #: Whether :meth:`try_acquire` and :meth:`release` may run on an event loop: they never
    #: wait on a network or on another process (memory://: a dict; file://: a non-blocking
    #: ``fcntl`` on a descriptor the process holds). A backend that talks to a server over
    #: the network (redis://) sets it False: then no lease call of an ASGI request runs on
    #: the loop. Its tasks await :meth:`acquire_future` (which answers at once, with a
    #: Lease, when the key is free) instead of calling :meth:`try_acquire`, and release
    #: through :meth:`release_async`, whose default then runs :meth:`release` in a worker
    #: thread; a lease given up (:meth:`give_up`) is released in one too.
    inline_leases: bool = True

    def secret(self) -> bytes:
        """The default hashing secret when the user gives none.

        Backends shared by several processes must return the same secret in each of them,
        or the processes would hash one session to different locks.
        """
        return secrets.token_bytes(32)

    # Shared (reader) leases: ``shared=True`` asks for a lease that other shared leases of
    # the key may hold at once, and an exclusive one excludes. The order stays first come,
    # first served: a request (shared or not) never overtakes one that waits before it, so
    # readers arriving after a waiting writer wait behind it, and neither side starves.

    @abstractmethod
    def try_acquire(self, key: str, *, shared: bool = False) -> Lease | None:
        """Take ``key`` if it is free right now (for ``shared``: held by readers only, and
        nobody waits); never wait."""

    @abstractmethod
    def acquire(self, key: str, timeout: float | None, *, shared: bool = False) -> Lease | None:
        """Block until ``key`` is taken (a Lease) or ``timeout`` seconds pass (None)."""

    async def acquire_async(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> Lease | None:
        """:meth:`acquire` without blocking the event loop.

        The default runs the blocking call in a worker thread. If the awaiting task is
        cancelled, a lease that still arrives is released at once, so none is leaked.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            None, functools.partial(self.acquire, key, timeout, shared=shared)
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._release_orphan)
            raise

    def acquire_future(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> asyncio.Future[Lease | None]:
        """:meth:`acquire_async` as a future: cancelling it gives up (and gives back a lease
        that arrives anyway). The default is a task running :meth:`acquire_async`; a backend
        that can resolve a future itself returns that, and saves its waiters loop steps."""
        return asyncio.ensure_future(self.acquire_async(key, timeout, shared=shared))

    async def _await_lease(self, future: asyncio.Future[Lease | None]) -> Lease | None:
        """:meth:`acquire_async` of a backend with its own :meth:`acquire_future`: the future
        awaited, and given up (a lease that arrives anyway given back) if the task is cancelled."""
        try:
            return await future
        except asyncio.CancelledError:
            self.give_up(future)
            raise

    def _release_orphan(self, future: asyncio.Future[Lease | None]) -> None:
        self.give_up(future)

    def give_up(self, acquiring: asyncio.Future[Lease | None]) -> None:
        """Stop a wait for a lease nobody will use: cancelled if still coming, released if
        it arrived (a backend's future gives back a lease that lands after its cancel).
        Without :attr:`inline_leases` that release happens in a worker thread."""
        if not acquiring.done():
            acquiring.cancel()
        elif not acquiring.cancelled() and acquiring.exception() is None:
            lease = acquiring.result()
            if lease is not None:
                if self.inline_leases:
                    self.release(lease)
                else:
                    self._release_elsewhere(lease)

    def _release_elsewhere(self, lease: Lease) -> None:
        """Release ``lease`` in a worker thread, not waiting for it; a failure is logged."""
        thread = threading.Thread(
            target=_release_quietly, args=(self, lease), name="sessionlock-release", daemon=True
        )
        thread.start()

    @abstractmethod
    def release(self, lease: Lease) -> None:
        """Give the key back; the next waiter (in any process) may take it."""

    async def release_async(self, lease: Lease) -> None:
        """:meth:`release` for a task: inline with :attr:`inline_leases`, else in a worker
        thread (the release happens even if the awaiting task is cancelled meanwhile)."""
        if self.inline_leases:
            self.release(lease)
        else:
            await asyncio.shield(asyncio.to_thread(self.release, lease))

    def mark(self, lease: Lease) -> int | None:
        """Give the held key a new stamp, before changing state that others may cache.

        Returns the new stamp (also set on ``lease``), or None if the backend keeps no
        stamps (then nothing may be cached across leases). Never waits on other processes.
        ValueError for a shared lease: a reader changes nothing.
        """
        _writable(lease)
        return None

    #: Whether :meth:`load` and :meth:`store` under a held lease are cheap enough for an
    #: event loop: a few system calls on a descriptor the lease holds open, never a wait on a
    #: disk or a network. The ASGI shell runs the others in a worker thread.
    inline_records: bool = False

    def load(self, lease: Lease) -> str | None:
        """The record of the held key: what the last :meth:`store` under one of its leases
        stored, or else what :meth:`set` stored under the key (a key's first record, written
        before anyone could hold it). None if absent or expired."""
        return self.get(lease.key)

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int | None:
        """Replace the held key's record (None: delete it) and give the key a new stamp.

        Returns the new stamp (as :meth:`mark`). The stamp changes first: a failure midway
        leaves others reading the record again, never trusting their older copy. ValueError
        for a shared lease (as :meth:`mark`), before anything is written.
        """
        _writable(lease)
        stamp = self.mark(lease)
        if value is None:
            self.delete(lease.key)
        else:
            self.set(lease.key, value, ttl)
        return stamp

    @abstractmethod
    def get(self, key: str) -> str | None:
        """The value stored under ``key``, or None if absent, expired or evicted."""

    @abstractmethod
    def set(self, key: str, value: str, ttl: float | None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: no expiry).

        The store keeps at most ``max_values``: beyond that, other values (the oldest or
        closest to expiry) are evicted, never the one just set.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget ``key``'s value; absent keys are fine."""

    def close(self) -> None:
        """Free what the backend holds open, and leave the registry.

        A backend made by :func:`sessionlock.backends.from_url` is shared by every user of its
        URL in this process: closing it closes it for all of them, and a later ``from_url``
        makes a fresh one. Subclasses that override this call ``super().close()``.
        """
        _shared.forget(self)


def _writable(lease: Lease) -> None:
    """ValueError if ``lease`` is shared: it may read the key's record, never change it."""
    if lease.shared:
        raise ValueError(f"{lease!r} is shared: it may load the record, never change it")


def _release_quietly(backend: Backend, lease: Lease) -> None:
    try:
        backend.release(lease)
    except Exception as error:  # its lease expires or is released with its process
        logger.warning("sessionlock: a lease given up could not be released: %s", error)
