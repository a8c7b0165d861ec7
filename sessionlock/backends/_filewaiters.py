"""A process's line for the keys another process holds: one contender per key in the kernel.

Inside a process only the head of a key's local queue asks the file backend, so one
*contender* per (process, key), run on a helper thread kept alive between waits
(:mod:`sessionlock._helpers`), queues in the kernel (no polling: the kernel wakes it on
release) and hands the lock to whoever waits for it here: a thread (a ``threading.Lock``
released) or a task (a future resolved through ``call_soon_threadsafe``), so an event loop
never blocks and a waiting task costs no thread.

A kernel wait cannot time out, so timeouts and cancellation happen on the waiting side only:
a waiter that gives up just leaves the line. The contender keeps waiting; when it gets the
lock it gives it to the next waiter that arrived meanwhile, or gives it back at once if
nobody wants it. Hence a timed-out or cancelled wait never leaks a lock, and threads never
pile up: at most one per key that is busy in another process right now.

It serves its waiters in their order, one kernel wait at a time, each in the head's mode: a
reader's lease does not wait for the readers holding, so readers in a row at the head go in
one after another; a writer waits for all of them. Neither kind overtakes the other here,
and across processes the kernel's ticket line orders them (:mod:`._ticketlock`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable

from .._helpers import Helpers
from ..errors import BackendUnavailable
from ._filedir import unavailable
from .base import Lease

__all__ = ["Line", "Locked"]

#: A lock as taken: its descriptor, and the stamp (ns mtime) the lock file had then.
Locked = tuple[int, int]


class Line:
    """The waiters of one backend in this process, by key.

    ``take(key, shared)`` blocks until the key is locked (in its turn across processes) and
    returns it; ``give(fd)`` unlocks; ``lease(key, locked, shared)`` makes the Lease a task
    is handed.
    """

    def __init__(
        self,
        take: Callable[[str, bool], Locked],
        give: Callable[[int], None],
        lease: Callable[[str, Locked, bool], Lease],
    ) -> None:
        self.take, self.give, self.lease = take, give, lease
        self._helpers = Helpers("sessionlock-file-waiter")
        self.forget()

    def forget(self) -> None:
        """Nobody waits (also in a child forked while the parent's contenders waited)."""
        self._mutex = threading.Lock()
        self._contenders: dict[str, deque[_Slot]] = {}

    def busy(self, key: str) -> bool:
        """Whether a contender of this process is in line for ``key`` already."""
        return key in self._contenders

    def waiting(self, key: str) -> int:
        """How many of this process's requests wait for ``key`` here (for tests)."""
        with self._mutex:
            return len(self._contenders.get(key, ()))

    def wait(self, key: str, timeout: float | None, shared: bool) -> Locked | None:
        """Block the thread until the lock comes (None: ``timeout`` passed first)."""
        slot = _ThreadSlot(shared)
        self._enlist(key, slot)
        if not slot.wait(timeout):
            if self.withdraw(key, slot):
                return None
            slot.wait(None)  # the lock was handed over as we gave up: take it
        if slot.got is None:
            raise unavailable(slot.error)
        return slot.got

    def future(self, key: str, timeout: float | None, shared: bool) -> asyncio.Future[Lease | None]:
        """A future the lock's arrival resolves to a Lease (None: ``timeout`` passed first)."""
        slot = _TaskSlot(self, key, shared)
        self._enlist(key, slot)
        future = slot.future
        future.add_done_callback(slot.gone)
        if timeout is not None:
            timer = slot.loop.call_later(timeout, slot.expire)
            future.add_done_callback(lambda _: timer.cancel())
        return future

    def withdraw(self, key: str, slot: _Slot) -> bool:
        """Leave the line: True, or False when the lock (or an error) is already on its way."""
        with self._mutex:
            contender = self._contenders.get(key)
            if contender is not None and slot in contender:
                contender.remove(slot)
                return True
        return False

    def _enlist(self, key: str, slot: _Slot) -> None:
        with self._mutex:
            contender = self._contenders.get(key)
            start = contender is None
            if contender is None:
                contender = self._contenders[key] = deque()
            contender.append(slot)
        if start:
            self._helpers.run(functools.partial(self._contend, key, contender))

    def _contend(self, key: str, contender: deque[_Slot]) -> None:
        while True:
            with self._mutex:  # the head's mode; everyone may have given up meanwhile
                if not contender:
                    del self._contenders[key]
                    return
                shared = contender[0].shared
            try:
                got = self.take(key, shared)
            except BaseException as error:  # handed to every waiter, who raise it
                with self._mutex:
                    failed = list(contender)
                    del self._contenders[key]
                for waiter in failed:
                    waiter.deliver(None, error)
                return
            with self._mutex:
                # The head only, and in the mode taken: if it gave up meanwhile, a waiter of
                # the other mode may be first now (taken again in its mode, next round).
                slot = contender[0] if contender else None
                if slot is not None and slot.shared == shared:
                    contender.popleft()
                else:
                    slot = None
                done = not contender
                if done:
                    del self._contenders[key]
            if slot is None:  # everyone gave up while we waited, or the head changed mode
                self.give(got[0])
            else:
                slot.deliver(got, None)
            if done:
                return


class _Slot:
    """Where the contender delivers the lock or an error to one waiter; ``shared``: the
    waiter wants a reader's lease."""

    __slots__ = ("error", "got", "shared")

    def __init__(self, shared: bool = False) -> None:
        self.got: Locked | None = None
        self.error: BaseException | None = None
        self.shared = shared

    def deliver(self, got: Locked | None, error: BaseException | None) -> None:
        raise NotImplementedError


class _ThreadSlot(_Slot):
    __slots__ = ("_ready",)

    def __init__(self, shared: bool = False) -> None:
        super().__init__(shared)
        self._ready = threading.Lock()
        self._ready.acquire()

    def deliver(self, got: Locked | None, error: BaseException | None) -> None:
        self.got, self.error = got, error
        self._ready.release()

    def wait(self, timeout: float | None) -> bool:
        return self._ready.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class _TaskSlot(_Slot):
    """A task's place in line: a future the lock's arrival resolves to a Lease."""

    __slots__ = ("_line", "future", "key", "loop")

    def __init__(self, line: Line, key: str, shared: bool = False) -> None:
        super().__init__(shared)
        self._line = line
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Lease | None] = self.loop.create_future()

    def deliver(self, got: Locked | None, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._settle, got, error)
        except RuntimeError:  # the loop is closed: nobody will take the lock
            if got is not None:
                self._line.give(got[0])

    def _settle(self, got: Locked | None, error: BaseException | None) -> None:
        if self.future.done():  # the task gave up meanwhile: the lock goes back
            if got is not None:
                self._line.give(got[0])
        elif got is not None:
            self.future.set_result(self._line.lease(self.key, got, self.shared))
        else:
            self.future.set_exception(unavailable(error or BackendUnavailable("no lock")))

    def expire(self) -> None:
        """The timeout: None, unless the lock is already on its way (then it is taken)."""
        if not self.future.done() and self._line.withdraw(self.key, self):
            self.future.set_result(None)

    def gone(self, future: asyncio.Future[Lease | None]) -> None:
        """Cancelled: out of line (a lock on its way is given back by _settle)."""
        if future.cancelled():
            self._line.withdraw(self.key, self)
