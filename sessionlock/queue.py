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
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TypeVar

from .errors import LockTimeout, QueueFull

__all__ = ["KeyedQueue", "TaskWaiter"]


class _Waiter:
    __slots__ = ("granted", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self.granted = False

    def wake(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("_lock",)

    def __init__(self, key: str) -> None:
        super().__init__(key)
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

    def __init__(self, key: str) -> None:
        super().__init__(key)
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


class KeyedQueue:
    """FIFO mutual exclusion per key inside one process."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        # Present means held; the deque holds the waiters (None until the first one).
        self._keys: dict[str, deque[_Waiter] | None] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for right now."""
        return len(self._keys)

    def holds(self, key: str) -> bool:
        """Whether somebody holds ``key`` right now."""
        return key in self._keys

    def waiting(self, key: str) -> int:
        """How many requests wait for ``key`` right now (the holder not counted)."""
        with self._mutex:
            return len(self._keys.get(key) or ())

    def try_acquire(self, key: str) -> bool:
        """Take ``key`` if nobody holds it; never wait, never queue."""
        with self._mutex:
            if key in self._keys:
                return False
            self._keys[key] = None
            return True

    def acquire(self, key: str, *, timeout: float | None, max_waiters: int) -> None:
        """Block this thread until it holds ``key``; raise QueueFull or LockTimeout."""
        with self._mutex:
            waiter = self._enqueue(key, max_waiters, _ThreadWaiter)
        if waiter is None or waiter.wait(timeout):
            return
        with self._mutex:
            if waiter.granted:  # the turn came between the timeout and here: keep it
                return
            self._forget(waiter)
        raise LockTimeout(f"waited more than {timeout} s for the session lock")

    def join(self, key: str, *, max_waiters: int) -> TaskWaiter | None:
        """Take ``key`` now (None) or get a place in line to await with :meth:`wait`."""
        with self._mutex:
            return self._enqueue(key, max_waiters, TaskWaiter)

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
            with self._mutex:
                granted = waiter.granted
                if not granted:
                    self._forget(waiter)
            if granted:  # the turn arrived as we were cancelled: pass it on
                self.release(waiter.key)
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

    def release(self, key: str) -> None:
        """Hand ``key`` to its oldest waiter, or drop it when nobody waits."""
        with self._mutex:
            waiters = self._keys[key]
            if waiters:
                waiter = waiters.popleft()
                waiter.granted = True
                waiter.wake()
            else:
                del self._keys[key]

    def _enqueue(self, key: str, max_waiters: int, kind: type[_W]) -> _W | None:
        if key not in self._keys:
            self._keys[key] = None
            return None
        waiters = self._keys[key]
        if waiters is None:
            waiters = self._keys[key] = deque()
        if len(waiters) >= max_waiters:
            raise QueueFull(f"{len(waiters)} requests of this session are already waiting")
        waiter = kind(key)
        waiters.append(waiter)
        return waiter

    def _forget(self, waiter: _Waiter) -> None:
        # A waiter implies a holder, so the key's entry stays; only the waiter goes.
        waiters = self._keys[waiter.key]
        assert waiters is not None
        waiters.remove(waiter)
