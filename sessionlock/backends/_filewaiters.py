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

When its turn across processes comes while the lock is still held elsewhere, the contender
hands the rest of the wait to the request with the place in line (a :class:`Turn`), and is
done: the request waits on the bell the holder's release rings (:mod:`._bell`), so that
release wakes the request directly, not the contender first. A request that gives up hands
the turn to the next waiter here; one that takes the lock starts a contender for those left.

It serves its waiters in their order, one kernel wait at a time, each in the head's mode: a
reader's lease does not wait for the readers holding, so readers in a row at the head go in
one after another; a writer waits for all of them. Neither kind overtakes the other here,
and across processes the kernel's ticket line orders them (:mod:`._ticketlock`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from .._helpers import Helpers
from ..errors import BackendUnavailable
from . import _ticketlock
from ._bell import POLL, Bell
from ._filedir import unavailable
from .base import Lease

__all__ = ["AGAIN", "Line", "Locked", "Turn"]

#: A lock as taken: its descriptor, and the stamp (ns mtime) the lock file had then.
Locked = tuple[int, int]


class _Again:
    """The lock came on a file unlinked meanwhile: queue again, on the current file."""


AGAIN: Final = _Again()


class Turn:
    """The next place in line for one key, across processes (:mod:`._ticketlock`): nobody
    else may take the lock before it, and its holder's release rings ``bell``.

    ``settle(fd, shared, bell)``: the backend's bookkeeping once the lock is held (the held
    lock, or AGAIN if the file was unlinked, its descriptor then closed); it keeps the bell
    bound until the release, which closes it after ringing the next waiter's.
    """

    __slots__ = ("_loop", "bell", "fd", "settle", "shared", "ticket")

    def __init__(
        self,
        fd: int,
        ticket: int,
        shared: bool,
        bell: Bell,
        settle: Callable[[int, bool, Bell], Locked | _Again],
    ) -> None:
        self.fd, self.ticket, self.shared, self.bell, self.settle = fd, ticket, shared, bell, settle
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self) -> Locked | _Again | None:
        """The lock if its holder has let go (None: not yet), without waiting."""
        if not _ticketlock.try_hold(self.fd, shared=self.shared):
            return None
        self.unwatch()  # the bell itself stays bound until the release: not on this path
        _ticketlock.leave_line(self.fd, self.ticket)
        return self.settle(self.fd, self.shared, self.bell)

    def watch(self, loop: asyncio.AbstractEventLoop, rung: Callable[[], None]) -> None:
        """Call ``rung`` on ``loop`` at each ring (until :meth:`unwatch`)."""
        loop.add_reader(self.bell.fileno(), rung)
        self._loop = loop

    def unwatch(self) -> None:
        """Stop watching (before the bell closes: a closed fd's number is reused)."""
        if self._loop is not None:
            self._loop.remove_reader(self.bell.fileno())
            self._loop = None

    def abandon(self) -> None:
        """Nobody here wants it any more, or a take failed: out of line (closing the
        descriptor drops its mark and ticket, and whatever else it held)."""
        self.unwatch()
        self.bell.close()
        os.close(self.fd)


class Line:
    """The waiters of one backend in this process, by key.

    ``take(key, shared)`` blocks until the key is locked, or until it is next in line across
    processes (then returns the :class:`Turn`); ``give(fd)`` unlocks; ``lease(key, locked,
    shared)`` makes the Lease a task is handed.
    """

    def __init__(
        self,
        take: Callable[[str, bool], Locked | Turn],
        give: Callable[[int], None],
        lease: Callable[[str, Locked, bool], Lease],
    ) -> None:
        self.take, self.give, self.lease = take, give, lease
        self._helpers = Helpers("sessionlock-file-waiter")
        self.forget()

    def forget(self) -> None:
        """Nobody waits (also in a child forked while the parent's contenders waited)."""
        self._mutex = threading.Lock()
        # A key is here while a contender, or a waiter with its turn, serves its deque.
        self._contenders: dict[str, deque[_Slot]] = {}
        self._turns_out: dict[str, _Slot] = {}  # key -> the waiter with its turn (out of line)

    def busy(self, key: str) -> bool:
        """Whether a contender of this process is in line for ``key`` already."""
        return key in self._contenders

    def waiting(self, key: str) -> int:
        """How many of this process's requests wait for ``key`` here (for tests)."""
        with self._mutex:
            return len(self._contenders.get(key, ())) + (key in self._turns_out)

    def wait(self, key: str, timeout: float | None, shared: bool) -> Locked | None:
        """Block the thread until the lock comes (None: ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = _ThreadSlot(shared)
        self._enlist(key, slot)
        while True:
            if not slot.wait(_left(deadline)):
                if self.withdraw(key, slot):
                    return None
                slot.wait(None)  # the lock (or the turn) was handed over as we gave up
            turn, slot.turn = slot.turn, None
            if turn is None:
                break
            got = self._wait_for_ring(key, slot, turn, deadline)
            if not isinstance(got, _Again):
                return got
        if slot.got is None:
            raise unavailable(slot.error)
        return slot.got

    def _wait_for_ring(
        self, key: str, slot: _ThreadSlot, turn: Turn, deadline: float | None
    ) -> Locked | _Again | None:
        """Next in line, on the request's own thread: the holder's release rings the bell."""
        while True:
            try:
                got = turn.take()
            except BaseException as error:
                turn.abandon()
                self.turn_over(key, turn)
                raise unavailable(error) from error
            if got is not None:
                self.turn_over(key, turn, again=slot if isinstance(got, _Again) else None)
                return got
            left = _left(deadline)
            if left is not None and left <= 0:
                self.turn_over(key, turn, returned=True)  # to the next waiter here, if any
                return None
            try:
                turn.bell.drain()  # not before the first try: on the way of the rung waiter
                turn.bell.wait(POLL if left is None else min(left, POLL))
            except BaseException:  # KeyboardInterrupt, say: the turn goes on without us
                self.turn_over(key, turn, returned=True)
                raise

    def future(self, key: str, timeout: float | None, shared: bool) -> asyncio.Future[Lease | None]:
        """A future the lock's arrival resolves to a Lease (None: ``timeout`` passed first)."""
        slot = _TaskSlot(self, key, shared, timeout)
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

    def turn_over(
        self, key: str, turn: Turn, *, returned: bool = False, again: _Slot | None = None
    ) -> None:
        """A waiter is done with the key's turn: it holds the lock (or failed), or the turn is
        ``returned`` (for the next waiter here, if any), or it must queue ``again``, first.
        Those left in line then get a contender."""
        with self._mutex:
            contender = self._contenders[key]  # kept while the turn is out
            self._turns_out.pop(key, None)
            if again is not None:
                contender.appendleft(again)
            slot = self._head(contender, turn.shared) if returned else None
            if slot is not None:
                self._turns_out[key] = slot
            elif not contender:
                del self._contenders[key]
            restart = slot is None and bool(contender)
        if slot is not None:
            slot.hand(turn)
            return
        if returned:
            turn.abandon()
        if restart:
            self._helpers.run(functools.partial(self._contend, key, contender))

    def _enlist(self, key: str, slot: _Slot) -> None:
        with self._mutex:
            contender = self._contenders.get(key)
            start = contender is None
            if contender is None:
                contender = self._contenders[key] = deque()
            contender.append(slot)
            stranded = self._turns_out.get(key)
        if start:
            self._helpers.run(functools.partial(self._contend, key, contender))
        elif isinstance(stranded, _TaskSlot):
            stranded.strand_check()

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
                slot = self._head(contender, shared)
                if slot is not None and isinstance(got, Turn):
                    self._turns_out[key] = slot
            if isinstance(got, Turn):
                if slot is not None:
                    slot.hand(got)  # the waiter carries the line on (turn_over)
                    return
                got.abandon()
            elif slot is None:  # everyone gave up while we waited, or the head changed mode
                self.give(got[0])
            else:
                slot.deliver(got, None)

    @staticmethod
    def _head(contender: deque[_Slot], shared: bool) -> _Slot | None:
        # Under the mutex: the first waiter, out of line, if it wants this mode.
        if contender and contender[0].shared == shared:
            return contender.popleft()
        return None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class _Slot:
    """Where the contender delivers the lock, an error or a turn to one waiter; ``shared``:
    the waiter wants a reader's lease."""

    __slots__ = ("error", "got", "shared", "turn")

    def __init__(self, shared: bool = False) -> None:
        self.got: Locked | None = None
        self.error: BaseException | None = None
        self.shared = shared
        self.turn: Turn | None = None

    def deliver(self, got: Locked | None, error: BaseException | None) -> None:
        raise NotImplementedError

    def hand(self, turn: Turn) -> None:
        """The turn: wait for the bell yourself, then :meth:`Line.turn_over`."""
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

    def hand(self, turn: Turn) -> None:
        self.turn = turn
        self._ready.release()

    def wait(self, timeout: float | None) -> bool:
        return self._ready.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class _TaskSlot(_Slot):
    """A task's place in line: a future the lock's arrival resolves to a Lease."""

    __slots__ = ("_line", "_poll", "deadline", "future", "key", "loop")

    def __init__(
        self, line: Line, key: str, shared: bool = False, timeout: float | None = None
    ) -> None:
        super().__init__(shared)
        self._line = line
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.deadline = None if timeout is None else self.loop.time() + timeout
        self.future: asyncio.Future[Lease | None] = self.loop.create_future()
        self._poll: asyncio.TimerHandle | None = None

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

    def hand(self, turn: Turn) -> None:
        try:
            self.loop.call_soon_threadsafe(self._start_ringing, turn)
        except RuntimeError:  # the loop is closed: to the next waiter
            self._line.turn_over(self.key, turn, returned=True)

    def _start_ringing(self, turn: Turn) -> None:
        if self.future.done():  # cancelled meanwhile
            self._line.turn_over(self.key, turn, returned=True)
            return
        self.turn = turn
        turn.watch(self.loop, self._rung)
        self._rung()

    def _rung(self) -> None:
        """A ring, the poll's time, or the first look: take the lock if it is free."""
        turn = self.turn
        if turn is None:
            return
        if self.future.done():  # cancelled, its done callback (gone) not run yet
            self._give_up()
            return
        try:
            got = turn.take()
        except BaseException as error:
            self._drop_turn()
            turn.abandon()
            self._line.turn_over(self.key, turn)
            self.future.set_exception(unavailable(error))
            return
        if got is None:
            turn.bell.drain()  # the selector watches the level: read what woke it
            left = None if self.deadline is None else self.deadline - self.loop.time()
            if left is not None and left <= 0:  # the timeout came as the turn did
                self._give_up()
                return
            if self._poll is not None:
                self._poll.cancel()
            self._poll = self.loop.call_later(POLL if left is None else min(POLL, left), self._rung)
            return
        self._drop_turn()
        if isinstance(got, _Again):  # in line again, first, on the current file
            self._line.turn_over(self.key, turn, again=self)
            return
        self._line.turn_over(self.key, turn)
        self.future.set_result(self._line.lease(self.key, got, self.shared))

    def strand_check(self) -> None:
        """From another thread: if this task's loop was closed with the turn (its waiter
        neither cancelled nor woken), the turn goes on to the others in line."""
        if not self.loop.is_closed():
            return
        with self._line._mutex:  # enlisting threads may call at once: one takes it on
            turn, self.turn = self.turn, None
        if turn is not None:
            turn.unwatch()  # a closed loop watches nothing: a no-op
            self._line.turn_over(self.key, turn, returned=True)

    def _drop_turn(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.unwatch()
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    def _give_up(self) -> bool:
        """Hand the turn back, if any (True); the future then resolves to None."""
        turn = self.turn
        if turn is None:
            return False
        self._drop_turn()
        self._line.turn_over(self.key, turn, returned=True)
        if not self.future.done():
            self.future.set_result(None)
        return True

    def expire(self) -> None:
        """The timeout: None, unless the lock is already on its way (then it is taken)."""
        if self.future.done():
            return
        if self._line.withdraw(self.key, self):
            self.future.set_result(None)
        else:
            self._give_up()

    def gone(self, future: asyncio.Future[Lease | None]) -> None:
        """Cancelled: out of line (a lock on its way is given back by _settle)."""
        if future.cancelled() and not self._give_up():
            self._line.withdraw(self.key, self)
