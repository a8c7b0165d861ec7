"""A per-process FIFO queue per key, shared by threads (WSGI) and asyncio tasks (ASGI).

    queue = KeyedQueue()
    queue.acquire("k", timeout=5.0, max_waiters=16)   # this thread waits for its turn
    ...                                               # critical section of "k"
    queue.release("k")                                # the next waiter runs now

The turn passes straight from the releaser to the oldest waiter (a direct hand-off), so a
newcomer never barges ahead of a request already waiting: strict FIFO. A key's entry exists
only while somebody holds or waits for it, so memory does not grow with the sessions seen.
Waking a thread releases one ``threading.Lock``; waking a task resolves one future: the raw
primitives, with nothing polled.

Threads that wait are counted per process (:attr:`KeyedQueue.threads_waiting`): a caller
may cap them (``max_threads``) so that waiting requests never occupy every server thread.
A process forked from one that held or awaited keys starts with an empty queue.

Shared turns (``shared=True``: a request that only reads its session) are held by any
number of readers at once, while exclusive ones are held alone. The line stays one line:
a reader that finds a writer waiting waits behind it (no writer starves), and when a
writer's turn ends, every reader in a row at the head of the line goes in together.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from typing import TypeVar

from .errors import LockTimeout, QueueFull

__all__ = ["KeyedQueue", "TaskWaiter"]


class _Waiter:
    __slots__ = ("granted", "key", "left", "shared")

    def __init__(self, key: str, shared: bool = False) -> None:
        self.key = key
        self.shared = shared
        self.granted = False
        self.left = False  # out of line without the turn (timeout, abandon, cancel)

    def wake(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("_lock",)

    def __init__(self, key: str, shared: bool = False) -> None:
        super().__init__(key, shared)
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        if timeout is None:
            return self._lock.acquire()
        # Beyond TIMEOUT_MAX (days of years) the primitive raises OverflowError.
        return self._lock.acquire(timeout=min(max(timeout, 0.0), threading.TIMEOUT_MAX))


_W = TypeVar("_W", bound=_Waiter)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TaskWaiter(_Waiter):
    """An asyncio task's place in a key's queue (see :meth:`KeyedQueue.join`)."""

    __slots__ = ("_loop", "_thread", "future")

    def __init__(self, key: str, shared: bool = False) -> None:
        super().__init__(key, shared)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.future: asyncio.Future[None] = self._loop.create_future()

    def wake(self) -> None:
        # On the loop's own thread the future is resolved at once; from a WSGI thread
        # sharing the queue, through the loop's thread-safe door.
        if threading.get_ident() == self._thread:
            _resolve(self.future)
        else:
            self._loop.call_soon_threadsafe(_resolve, self.future)


class _Readers:
    """A key held by readers: how many, and who waits behind them (a writer first)."""

    __slots__ = ("count", "waiters")

    def __init__(self) -> None:
        self.count = 1
        self.waiters: deque[_Waiter] | None = None


class KeyedQueue:
    """FIFO mutual exclusion per key inside one process (readers share a turn)."""

    def __init__(self) -> None:
        self._reset()
        _QUEUES.add(self)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        # Present means held: by one (the waiters, None until the first one) or by readers.
        self._keys: dict[str, deque[_Waiter] | _Readers | None] = {}
        #: Threads waiting right now: in line here, or for a backend (:meth:`reserve_thread`).
        self.threads_waiting = 0
        # Keys held when this process was forked: their holder's release is a no-op here.
        self._orphans: frozenset[str] = frozenset()

    def _after_fork_in_child(self) -> None:
        # The threads that held or awaited these keys did not come along: nobody would ever
        # release them. The mutex too may have been held by one of them at the fork.
        orphans = frozenset(self._keys)
        self._reset()
        self._orphans = orphans

    def __len__(self) -> int:
        """How many keys are held or waited for right now."""
        return len(self._keys)

    def holds(self, key: str) -> bool:
        """Whether somebody holds ``key`` right now."""
        return key in self._keys

    def readers(self, key: str) -> int:
        """How many readers hold ``key`` right now (0: nobody, or a writer)."""
        entry = self._keys.get(key)
        return entry.count if isinstance(entry, _Readers) else 0

    def waiting(self, key: str) -> int:
        """How many requests wait for ``key`` right now (the holders not counted)."""
        with self._mutex:
            return len(_line(self._keys.get(key)) or ())

    def try_acquire(self, key: str, *, shared: bool = False) -> bool:
        """Take ``key`` if nobody holds it (``shared``: or only readers do, and nobody
        waits); never wait, never queue."""
        # Every request passes here and through release: the mutex is taken by hand, at half
        # the cost of a ``with`` block (CPython 3.11-3.13).
        mutex = self._mutex
        mutex.acquire()
        try:
            if key in self._keys:
                if not shared:
                    return False
                entry = self._keys[key]
                if not isinstance(entry, _Readers) or entry.waiters:
                    return False
                entry.count += 1
                return True
            self._keys[key] = _Readers() if shared else None
            return True
        finally:
            mutex.release()

    def acquire(
        self,
        key: str,
        *,
        timeout: float | None,
        max_waiters: int,
        max_threads: int | None = None,
        shared: bool = False,
    ) -> None:
        """Block this thread until it holds ``key``; raise QueueFull or LockTimeout.

        ``max_threads``: how many threads of the process may wait at once (None: any);
        one more is refused with QueueFull instead of waiting.
        """
        with self._mutex:
            busy = key in self._keys and not (shared and _joinable(self._keys[key]))
            if busy and max_threads is not None and self.threads_waiting >= max_threads:
                raise QueueFull(
                    f"{self.threads_waiting} threads of this process already wait for"
                    " their session; one more could leave no thread for other sessions"
                )
            waiter = self._enqueue(key, max_waiters, _ThreadWaiter, shared=shared)
            if waiter is not None:
                self.threads_waiting += 1
        if waiter is None or waiter.wait(timeout):
            return
        with self._mutex:
            if waiter.granted:  # the turn came between the timeout and here: keep it
                return
            self._forget(waiter)
        raise LockTimeout(f"waited more than {timeout} s for the session lock")

    def reserve_thread(self, max_threads: int | None) -> bool:
        """Count this thread as waiting (for a backend) if fewer than ``max_threads`` do."""
        with self._mutex:
            if max_threads is not None and self.threads_waiting >= max_threads:
                return False
            self.threads_waiting += 1
            return True

    def unreserve_thread(self) -> None:
        """This thread, counted by :meth:`reserve_thread`, waits no more."""
        with self._mutex:
            self.threads_waiting = max(0, self.threads_waiting - 1)

    def join(self, key: str, *, max_waiters: int, shared: bool = False) -> TaskWaiter | None:
        """Take ``key`` now (None) or get a place in line to await with :meth:`wait`."""
        with self._mutex:
            return self._enqueue(key, max_waiters, TaskWaiter, shared=shared)

    async def wait(self, waiter: TaskWaiter, timeout: float | None) -> None:
        """Wait for ``waiter``'s turn; raise LockTimeout, or what :meth:`abandon` gave."""
        timer = None
        if timeout is not None:
            timer = waiter._loop.call_later(
                timeout, self.abandon, waiter, LockTimeout(f"waited more than {timeout} s")
            )
        try:
            await waiter.future
        except asyncio.CancelledError:
            # The cancel may land in the same loop turn as an abandon (a disconnect, the
            # timer) that already took the waiter out of line and set the future's error:
            # the waiter leaves once, and the cancellation is what the caller sees.
            with self._mutex:
                granted = waiter.granted
                if not granted:
                    self._forget(waiter)
            future = waiter.future
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the abandon's error is superseded
            if granted:  # the turn arrived as we were cancelled: pass it on
                self.release(waiter.key, shared=waiter.shared)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def abandon(self, waiter: TaskWaiter, error: BaseException) -> None:
        """Take ``waiter`` out of line and make its :meth:`wait` raise ``error``."""
        with self._mutex:
            if waiter.granted or waiter.future.done():
                return
            self._forget(waiter)
        waiter.future.set_exception(error)

    def release(self, key: str, *, shared: bool = False) -> None:
        """End one holder's turn: the key goes to the head of its line (a writer, or every
        reader in a row there) once no holder is left, or is dropped when nobody waits."""
        mutex = self._mutex
        mutex.acquire()  # by hand, as in try_acquire
        try:
            if key in self._orphans and key not in self._keys:
                return  # held by the parent before this process was forked: nothing here
            entry = self._keys[key]
            if isinstance(entry, _Readers):
                entry.count -= 1
                if entry.count:
                    return  # other readers still hold it
                waiters = entry.waiters
            else:
                waiters = entry
            if waiters:
                self._grant(key, waiters)
            else:
                del self._keys[key]
        finally:
            mutex.release()

    def _grant(self, key: str, waiters: deque[_Waiter]) -> None:
        # Under the mutex, the key free: its head waiter gets it, with the readers behind it.
        waiter = waiters.popleft()
        if not waiter.shared:
            self._keys[key] = waiters or None
            self._wake(waiter)
            return
        readers = _Readers()
        readers.count = 0
        self._keys[key] = readers
        woken = [waiter]
        while waiters and waiters[0].shared:
            woken.append(waiters.popleft())
        readers.count = len(woken)
        readers.waiters = waiters or None
        for reader in woken:
            self._wake(reader)

    def _wake(self, waiter: _Waiter) -> None:
        waiter.granted = True
        if isinstance(waiter, _ThreadWaiter):
            self.threads_waiting -= 1
        waiter.wake()

    def _enqueue(
        self, key: str, max_waiters: int, kind: type[_W], shared: bool = False
    ) -> _W | None:
        entry = self._keys.get(key, _FREE)
        if entry is _FREE:
            self._keys[key] = _Readers() if shared else None
            return None
        if shared and isinstance(entry, _Readers) and not entry.waiters:
            entry.count += 1
            return None
        if isinstance(entry, _Readers):
            waiters = entry.waiters
            if waiters is None:
                waiters = entry.waiters = deque()
        else:
            waiters = entry  # type: ignore[assignment]
            if waiters is None:
                waiters = self._keys[key] = deque()
        if len(waiters) >= max_waiters:
            raise QueueFull(f"{len(waiters)} requests of this session are already waiting")
        waiter = kind(key, shared)
        waiters.append(waiter)
        return waiter

    def _forget(self, waiter: _Waiter) -> None:
        # A waiter implies a holder, so the key's entry stays; only the waiter goes. Once:
        # an abandon and a cancel of the same waiter may both come (the second is a no-op).
        if waiter.left or waiter.granted:
            return
        waiter.left = True
        if isinstance(waiter, _ThreadWaiter):
            self.threads_waiting -= 1
        entry = self._keys[waiter.key]
        waiters = _line(entry)
        assert waiters is not None
        waiters.remove(waiter)
        if isinstance(entry, _Readers):
            # The writer that held readers back left the line: the readers now at its head
            # join those holding the key.
            while waiters and waiters[0].shared:
                reader = waiters.popleft()
                entry.count += 1
                self._wake(reader)
            entry.waiters = waiters or None


_FREE: object = object()


def _line(entry: deque[_Waiter] | _Readers | None) -> deque[_Waiter] | None:
    return entry.waiters if isinstance(entry, _Readers) else entry


def _joinable(entry: deque[_Waiter] | _Readers | None) -> bool:
    """Whether a reader arriving now gets in at once."""
    return isinstance(entry, _Readers) and not entry.waiters


#: Every queue of the process, reset in a forked child (see KeyedQueue._after_fork_in_child).
_QUEUES: weakref.WeakSet[KeyedQueue] = weakref.WeakSet()


def _reset_queues_in_child() -> None:
    for queue in list(_QUEUES):
        queue._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_queues_in_child)
