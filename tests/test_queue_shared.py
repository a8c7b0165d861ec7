"""KeyedQueue's shared turns: readers hold a key together, writers alone, in one line.

Each test puts requests in line in a known order (a probe queue reports every request it
queues, so no test sleeps to let a thread get there) and checks who holds the key after each
release. The control of each ordering claim is the exclusive queue's own suite
(tests/test_queue.py): with every request exclusive, the same lines run one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sessionlock.errors import LockTimeout
from sessionlock.queue import KeyedQueue

WAIT = 10.0


class Probe(KeyedQueue):
    """Counts the requests it put in line, and lets a test wait for the n-th."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = threading.Semaphore(0)

    def _enqueue(self, key: str, max_waiters: int, kind: Any, **more: Any) -> Any:
        waiter = super()._enqueue(key, max_waiters, kind, **more)
        if waiter is not None:
            self.queued.release()
        return waiter

    def wait_queued(self) -> None:
        assert self.queued.acquire(timeout=WAIT)


class Request:
    """A thread that waits for its turn, says so, and holds it until told to leave."""

    def __init__(self, queue: Probe, name: str, *, shared: bool) -> None:
        self.queue, self.name, self.shared = queue, name, shared
        self.entered = threading.Event()
        self.leave = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.queue.acquire("k", timeout=WAIT, max_waiters=16, shared=self.shared)
        except BaseException as error:  # told to the test
            self.error = error
            self.entered.set()
            return
        self.entered.set()
        self.leave.wait(WAIT)
        self.queue.release("k", shared=self.shared)

    def start_queued(self) -> Request:
        """Start and wait until it is in line (it does not hold the key)."""
        self.thread.start()
        self.queue.wait_queued()
        assert not self.entered.is_set()
        return self

    def finish(self) -> None:
        self.leave.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def queue() -> Iterator[Probe]:
    made = Probe()
    yield made
    assert len(made) == 0, "a key is left held or waited for"


def test_readers_hold_together_and_exclude_a_writer(queue: Probe) -> None:
    assert queue.try_acquire("k", shared=True)
    assert queue.try_acquire("k", shared=True)
    assert queue.readers("k") == 2
    assert not queue.try_acquire("k")  # a writer
    queue.release("k", shared=True)
    assert not queue.try_acquire("k")
    queue.release("k", shared=True)
    assert queue.try_acquire("k")
    assert not queue.try_acquire("k", shared=True)  # a reader, while the writer holds
    queue.release("k")


def test_a_reader_behind_a_waiting_writer_waits_for_it(queue: Probe) -> None:
    assert queue.try_acquire("k", shared=True)  # R1 holds
    writer = Request(queue, "W", shared=False).start_queued()
    assert not queue.try_acquire("k", shared=True)  # R2 may not overtake W
    reader = Request(queue, "R2", shared=True).start_queued()
    queue.release("k", shared=True)  # R1 leaves: W, not R2
    assert writer.entered.wait(WAIT)
    assert not reader.entered.is_set()
    writer.finish()
    assert reader.entered.wait(WAIT)
    reader.finish()


def test_the_readers_in_a_row_after_a_writer_go_in_together(queue: Probe) -> None:
    assert queue.try_acquire("k")  # W1 holds
    first = Request(queue, "R1", shared=True).start_queued()
    second = Request(queue, "R2", shared=True).start_queued()
    writer = Request(queue, "W2", shared=False).start_queued()
    third = Request(queue, "R3", shared=True).start_queued()
    queue.release("k")
    assert first.entered.wait(WAIT)
    assert second.entered.wait(WAIT)  # both, while the other still holds
    assert queue.readers("k") == 2
    assert not writer.entered.is_set()
    assert not third.entered.is_set()  # behind W2
    first.finish()
    assert not writer.entered.is_set()  # R2 still holds
    second.finish()
    assert writer.entered.wait(WAIT)
    assert not third.entered.is_set()
    writer.finish()
    assert third.entered.wait(WAIT)
    third.finish()


def test_a_writer_that_gives_up_lets_the_readers_behind_it_in(queue: Probe) -> None:
    assert queue.try_acquire("k", shared=True)  # R1 holds
    timed_out: list[BaseException] = []

    def impatient() -> None:
        try:
            queue.acquire("k", timeout=0.05, max_waiters=16)
        except LockTimeout as error:
            timed_out.append(error)

    writer = threading.Thread(target=impatient, daemon=True)
    writer.start()
    queue.wait_queued()
    reader = Request(queue, "R2", shared=True).start_queued()
    writer.join(WAIT)
    assert timed_out  # the writer left the line...
    assert reader.entered.wait(WAIT)  # ...and the reader behind it joined R1
    assert queue.readers("k") == 2
    reader.finish()
    queue.release("k", shared=True)


def test_tasks_share_and_wait_in_the_same_line(queue: Probe) -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        assert queue.join("k", max_waiters=16, shared=True) is None  # R1 holds
        writer = queue.join("k", max_waiters=16)
        assert writer is not None
        reader = queue.join("k", max_waiters=16, shared=True)
        assert reader is not None  # behind the writer

        async def run(waiter: Any, name: str, shared: bool) -> None:
            await queue.wait(waiter, WAIT)
            order.append(name)
            await asyncio.sleep(0)  # let the other run while holding, if it could
            queue.release("k", shared=shared)

        tasks = [
            asyncio.ensure_future(run(writer, "W", False)),
            asyncio.ensure_future(run(reader, "R2", True)),
        ]
        await asyncio.sleep(0)
        assert order == []
        queue.release("k", shared=True)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["W", "R2"]


def test_a_cancelled_reader_that_got_its_turn_passes_it_on(queue: Probe) -> None:
    async def scenario() -> None:
        assert queue.join("k", max_waiters=16) is None  # W holds
        reader = queue.join("k", max_waiters=16, shared=True)
        assert reader is not None
        task = asyncio.ensure_future(queue.wait(reader, WAIT))
        await asyncio.sleep(0)
        queue.release("k")  # the reader's turn...
        task.cancel()  # ...as it is cancelled: given back, shared
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
