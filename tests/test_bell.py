"""The next waiter's doorbell (sessionlock.backends._bell): a release in another process wakes
the waiting request itself; a squatted name, a timeout and a cancellation keep the line right.

Two backends on one directory stand for two processes (each has its own line and descriptors;
the kernel's locks and the bells do not know processes). The poll that catches a holder that
rings nobody (SIGKILL) is set to an hour here, so only a ring can wake a waiter in time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionlock.backends import _bell, _filewaiters
from sessionlock.backends.base import Lease
from sessionlock.backends.file import _LOCK, FileBackend

pytestmark = pytest.mark.skipif(not _bell.AVAILABLE, reason="bells need Linux")

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_filewaiters, "POLL", 3600.0)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[FileBackend, FileBackend]]:
    holder, waiter = FileBackend(tmp_path / "locks"), FileBackend(tmp_path / "locks")
    assert holder.swept.wait(60)
    assert waiter.swept.wait(60)
    yield holder, waiter
    holder.close()
    waiter.close()


def _until(condition: Callable[[], bool], what: str) -> None:
    """Polls another thread's state (it waits inside the backend: no event to wait on)."""
    for _ in range(30_000):
        if condition():
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"not reached: {what}")


def _has_turn(backend: FileBackend) -> Callable[[], bool]:
    return lambda: KEY in backend._line._turns_out


def _addresses(backend: FileBackend) -> tuple[bytes, bytes]:
    return _bell.addresses(backend.secret(), backend._name(KEY, _LOCK))


def _wait_in_thread(backend: FileBackend, timeout: float) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(backend.acquire(KEY, timeout)))
    thread.start()
    return thread, got


def _hold(backend: FileBackend) -> Lease:
    held = backend.try_acquire(KEY)
    assert held is not None
    return held


def _hand_over(
    holder: FileBackend,
    held: Lease,
    waiter: FileBackend,
    thread: threading.Thread,
    got: list[object],
) -> None:
    """The holder lets go: the waiting thread gets the lock (and gives it back)."""
    holder.release(held)
    thread.join(60)
    lease = got[0]
    assert isinstance(lease, Lease)
    waiter.release(lease)


def test_the_release_rings_the_waiting_request(pair: tuple[FileBackend, FileBackend]) -> None:
    holder, waiter = pair
    held = _hold(holder)
    thread, got = _wait_in_thread(waiter, 60.0)
    _until(_has_turn(waiter), "the waiting request has the turn (waits on the bell)")
    _hand_over(holder, held, waiter, thread, got)


def test_control_without_the_ring_the_waiter_sleeps_on(
    pair: tuple[FileBackend, FileBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with releases that ring nobody: the lock is free, the waiter still waits,
    until the ring it was missing."""
    holder, waiter = pair
    monkeypatch.setattr(_bell, "ring", lambda to: None)
    held = _hold(holder)
    thread, got = _wait_in_thread(waiter, 60.0)
    _until(_has_turn(waiter), "the waiting request has the turn")
    holder.release(held)
    thread.join(0.5)
    assert thread.is_alive()  # nothing woke it
    assert got == []
    monkeypatch.undo()
    _bell.ring(_addresses(waiter)[0])
    thread.join(60)
    assert isinstance(got[0], Lease)
    waiter.release(got[0])


def _blocked_in_kernel(inode: int) -> bool:
    with open("/proc/locks") as table:
        return any("->" in line and f":{inode} " in line for line in table)


def test_a_holder_keeps_its_bell_and_rings_the_next_waiters_other_one(
    pair: tuple[FileBackend, FileBackend],
) -> None:
    """H holds; W1 waits on the first bell and gets the lock, keeping that bell bound until
    it lets go (closing it is off the hand-off's path); W2 then waits on the second, which
    W1's release rings."""
    holder, waiter = pair
    held = _hold(holder)
    first, first_got = _wait_in_thread(waiter, 60.0)
    _until(_has_turn(waiter), "W1 has the turn")
    holder.release(held)
    first.join(60)
    w1 = first_got[0]
    assert isinstance(w1, Lease)
    second, second_got = _wait_in_thread(holder, 60.0)  # W2, in the other "process"
    _until(_has_turn(holder), "W2 has the turn")
    with open("/proc/net/unix") as table:
        bound = sorted(line.split()[-1] for line in table if "sessionlock-bell-" in line)
    assert bound == sorted("@" + name[1:].decode() for name in _addresses(waiter))
    _hand_over(waiter, w1, holder, second, second_got)


def test_a_squatted_bell_sends_the_waiter_back_to_the_kernels_wait(
    pair: tuple[FileBackend, FileBackend], tmp_path: Path
) -> None:
    holder, waiter = pair
    squatters = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for squatter, name in zip(squatters, _addresses(waiter), strict=True):
        squatter.bind(name)
    try:
        held = _hold(holder)
        thread, got = _wait_in_thread(waiter, 60.0)
        inode = (tmp_path / "locks" / f"{KEY}.lock").stat().st_ino
        _until(lambda: _blocked_in_kernel(inode), "the waiter blocks in the kernel")
        assert not _has_turn(waiter)()
        _hand_over(holder, held, waiter, thread, got)  # the kernel woke it
    finally:
        for squatter in squatters:
            squatter.close()


def test_a_waiter_that_times_out_hands_the_turn_to_the_next(
    pair: tuple[FileBackend, FileBackend], tmp_path: Path
) -> None:
    holder, waiter = pair
    held = _hold(holder)
    first, first_got = _wait_in_thread(waiter, 0.2)
    _until(_has_turn(waiter), "the first waiter has the turn")
    second, second_got = _wait_in_thread(waiter, 60.0)
    _until(lambda: waiter.waiting(KEY) == 2, "the second waits behind it")
    first.join(60)
    assert first_got == [None]  # timed out, while the lock was held
    _until(lambda: waiter.waiting(KEY) == 1, "the turn went on")
    tickets = (tmp_path / "locks" / f"{KEY}.lock").stat().st_size
    _hand_over(holder, held, waiter, second, second_got)
    # One ticket drawn for both: the second took over the first's place, not a new one.
    assert tickets == 1


def test_a_task_is_rung_and_a_cancelled_one_hands_the_turn_on(
    pair: tuple[FileBackend, FileBackend],
) -> None:
    holder, waiter = pair
    held = _hold(holder)

    async def main() -> Lease | None:
        cancelled = asyncio.ensure_future(waiter.acquire_async(KEY, 60.0))
        await asyncio.to_thread(_until, _has_turn(waiter), "the first task has the turn")
        second = asyncio.ensure_future(waiter.acquire_async(KEY, 60.0))
        await asyncio.to_thread(_until, lambda: waiter.waiting(KEY) == 2, "a second task")
        cancelled.cancel()
        await asyncio.to_thread(_until, lambda: waiter.waiting(KEY) == 1, "the turn went on")
        assert not second.done()
        holder.release(held)
        return await second

    lease = asyncio.run(main())
    assert isinstance(lease, Lease)
    waiter.release(lease)


def test_a_task_that_times_out_leaves_the_lock_to_the_holders_next(
    pair: tuple[FileBackend, FileBackend],
) -> None:
    holder, waiter = pair
    held = _hold(holder)

    async def main() -> Lease | None:
        return await waiter.acquire_async(KEY, 0.2)

    assert asyncio.run(main()) is None
    assert waiter.waiting(KEY) == 0
    holder.release(held)
    again = holder.try_acquire(KEY)  # nobody left in line: the fast path is open
    assert again is not None
    holder.release(again)


def test_bell_names_show_neither_the_key_nor_its_file(
    pair: tuple[FileBackend, FileBackend], tmp_path: Path
) -> None:
    holder, waiter = pair
    held = _hold(holder)
    thread, got = _wait_in_thread(waiter, 60.0)
    _until(_has_turn(waiter), "the waiter has the turn")
    with open("/proc/net/unix") as table:
        bells = [line.split()[-1] for line in table if "sessionlock-bell-" in line]
    _hand_over(holder, held, waiter, thread, got)
    assert bells == ["@" + _addresses(waiter)[0][1:].decode()]
    assert KEY not in bells[0]
    other = FileBackend(tmp_path / "other")  # another directory: another secret, another name
    try:
        assert set(_bell.addresses(other.secret(), f"{KEY}{_LOCK}")).isdisjoint(_addresses(waiter))
    finally:
        other.close()


def test_a_turn_left_on_a_closed_loop_goes_on_to_the_next_request(
    pair: tuple[FileBackend, FileBackend],
) -> None:
    """A loop closed while one of its tasks had the turn (neither cancelled nor woken): the
    next request of the key in this process takes the turn over instead of waiting forever."""
    holder, waiter = pair
    held = _hold(holder)
    loop = asyncio.new_event_loop()
    stranded = loop.create_task(waiter.acquire_async(KEY, 60.0))
    loop.run_until_complete(asyncio.to_thread(_until, _has_turn(waiter), "the task's turn"))
    loop.close()  # the task is never cancelled
    assert not stranded.done()
    thread, got = _wait_in_thread(waiter, 60.0)
    _until(lambda: waiter.waiting(KEY) == 1, "the thread took the turn over")
    _hand_over(holder, held, waiter, thread, got)


def test_a_ring_that_comes_after_a_cancel_gives_the_turn_up(
    pair: tuple[FileBackend, FileBackend],
) -> None:
    """A ring handled after the waiting task was cancelled but before its done callback ran
    (both ready in one loop step): the lock is not taken for nobody, the turn is given up."""
    holder, waiter = pair
    held = _hold(holder)

    async def main() -> None:
        future = waiter._line.future(KEY, 60.0, False)
        await asyncio.to_thread(_until, _has_turn(waiter), "the task has the turn")
        slot = waiter._line._turns_out[KEY]
        assert isinstance(slot, _filewaiters._TaskSlot)
        holder.release(held)  # the lock is free: a take would now succeed
        future.cancel()  # its done callback runs at the next step...
        slot._rung()  # ...after this ring, handled first
        await asyncio.sleep(0)

    asyncio.run(main())
    assert waiter.waiting(KEY) == 0
    again = holder.try_acquire(KEY)  # nobody holds it, nobody is in line
    assert again is not None
    holder.release(again)
