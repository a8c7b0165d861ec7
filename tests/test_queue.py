"""The per-process FIFO queue: exclusion per key, strict arrival order, independent keys, no leaks.

The property tests drive real threads and real asyncio tasks (on a loop thread) through random
schedules. Arrival order is fixed without sleeps: each request is started only after the one
before it is observed either holding its key or sitting in the key's queue (a hook on the
queue's enqueue step), and a holder leaves only when the test tells it to. The test keeps a
model of who must hold each key, so a wrong grant is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionlock import queue as queue_module
from sessionlock.errors import ClientGone, LockTimeout, QueueFull
from sessionlock.queue import KeyedQueue, TaskWaiter

WAIT = 10.0  # liveness guard for event waits; never reached when the code is right
KEYS = ("a", "b", "c")

CURRENT: contextvars.ContextVar[Request | None] = contextvars.ContextVar("current", default=None)


class ObservedQueue(KeyedQueue):
    """A KeyedQueue that tells the current request when it has been put in line."""

    def _enqueue(self, key: str, max_waiters: int, kind: Any, **more: Any) -> Any:
        waiter = super()._enqueue(key, max_waiters, kind, **more)
        request = CURRENT.get()
        if request is not None and waiter is not None:
            request.queued.set()
            if isinstance(request.harness, Harness):
                with request.harness.cond:
                    request.harness.cond.notify_all()
        return waiter


class Request:
    def __init__(self, rid: int, key: str, kind: str) -> None:
        self.rid = rid
        self.key = key
        self.kind = kind
        self.queued = threading.Event()
        self.done = threading.Event()
        self.go = threading.Event()  # threads
        self.go_async: asyncio.Event | None = None  # tasks (made on the loop)
        self.ready = threading.Event()  # go_async exists
        self.harness: object = None


class Harness:
    """Runs requests as threads or loop tasks; records every enter and exit."""

    def __init__(self, queue: KeyedQueue, loop: asyncio.AbstractEventLoop | None) -> None:
        self.queue = queue
        self.loop = loop
        self.cond = threading.Condition()
        self.journal: list[tuple[str, int, str]] = []  # ("enter"|"exit", rid, key)
        self.inside: dict[str, int] = {}
        self.overlaps: list[str] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.requests: list[Request] = []

    def _enter(self, request: Request) -> None:
        with self.cond:
            self.inside[request.key] = self.inside.get(request.key, 0) + 1
            if self.inside[request.key] > 1:
                self.overlaps.append(request.key)
            self.journal.append(("enter", request.rid, request.key))
            self.cond.notify_all()

    def _exit(self, request: Request) -> None:
        with self.cond:
            self.inside[request.key] -= 1
            self.journal.append(("exit", request.rid, request.key))

    def _thread_body(self, request: Request) -> None:
        try:
            CURRENT.set(request)
            self.queue.acquire(request.key, timeout=None, max_waiters=100)
            self._enter(request)
            assert request.go.wait(WAIT)
            self._exit(request)
            self.queue.release(request.key)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            request.done.set()

    async def _task_body(self, request: Request) -> None:
        try:
            CURRENT.set(request)
            request.go_async = asyncio.Event()
            request.ready.set()
            waiter = self.queue.join(request.key, max_waiters=100)
            if waiter is not None:
                await self.queue.wait(waiter, None)
            self._enter(request)
            await request.go_async.wait()
            self._exit(request)
            self.queue.release(request.key)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            request.done.set()

    def wait_queued_or_entered(self, request: Request) -> None:
        def seen() -> bool:
            return request.queued.is_set() or request.rid in self.enters_of(request.key)

        with self.cond:
            assert self.cond.wait_for(seen, WAIT)

    def start(self, request: Request) -> None:
        request.harness = self
        if request.kind == "thread":
            thread = threading.Thread(target=self._thread_body, args=(request,), daemon=True)
            self.threads.append(thread)
            thread.start()
        else:
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self._task_body(request), self.loop)

    def let_go(self, request: Request) -> None:
        if request.kind == "thread":
            request.go.set()
        else:
            assert self.loop is not None
            assert request.ready.wait(WAIT)
            assert request.go_async is not None
            self.loop.call_soon_threadsafe(request.go_async.set)

    def enters_of(self, key: str) -> list[int]:
        return [rid for what, rid, k in self.journal if what == "enter" and k == key]

    def wait_next_enter(self, key: str, count: int) -> int:
        """Block until ``key`` has been entered ``count`` times; the latest enterer."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.enters_of(key)) >= count, WAIT)
            return self.enters_of(key)[count - 1]


@contextlib.contextmanager
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as an ASGI server's would beside WSGI threads."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def run_schedule(
    steps: list[tuple[str, int, str]],
    final_order: list[int],
    *,
    loop: asyncio.AbstractEventLoop | None,
    queue_type: type[ObservedQueue] = ObservedQueue,
) -> Harness:
    """Play ``steps`` (arrive KEY KIND / release N), then release all; check as we go."""
    queue = queue_type()
    harness = Harness(queue, loop)
    try:
        return _play(harness, steps, final_order)
    finally:
        for request in harness.requests:  # on failure too: nobody is left blocked
            harness.let_go(request)
        for request in harness.requests:
            request.done.wait(WAIT)
        for thread in harness.threads:
            thread.join(WAIT)


def _play(harness: Harness, steps: list[tuple[str, int, str]], final_order: list[int]) -> Harness:
    queue = harness.queue
    holder: dict[str, Request | None] = dict.fromkeys(KEYS)
    line: dict[str, deque[Request]] = {k: deque() for k in KEYS}
    entered: dict[str, int] = dict.fromkeys(KEYS, 0)
    arrivals: dict[str, list[int]] = {k: [] for k in KEYS}
    requests = harness.requests

    def release(request: Request) -> None:
        key = request.key
        harness.let_go(request)
        assert request.done.wait(WAIT)
        if line[key]:
            following = line[key].popleft()
            entered[key] += 1
            # The oldest waiter, and nobody else, gets the key next.
            assert harness.wait_next_enter(key, entered[key]) == following.rid
            holder[key] = following
        else:
            holder[key] = None

    for what, number, kind in steps:
        if what == "arrive":
            key = KEYS[number]
            request = Request(len(requests), key, kind)
            requests.append(request)
            arrivals[key].append(request.rid)
            harness.start(request)
            if holder[key] is None:
                # A free key is taken at once, whatever other keys are held.
                holder[key] = request
                entered[key] += 1
                assert harness.wait_next_enter(key, entered[key]) == request.rid
            else:
                # It must queue; entering instead is an overlap, caught here at once.
                harness.wait_queued_or_entered(request)
                assert request.queued.is_set(), "entered a key somebody else holds"
                line[key].append(request)
        else:
            held = [r for r in holder.values() if r is not None]
            if held:
                release(held[number % len(held)])
    for number in final_order:
        held = [r for r in holder.values() if r is not None]
        if not held:
            break
        release(held[number % len(held)])
    while any(holder.values()):
        release(next(r for r in holder.values() if r is not None))

    for thread in harness.threads:
        thread.join(WAIT)
    assert all(r.done.wait(WAIT) for r in requests)
    assert not harness.errors, harness.errors
    assert not harness.overlaps, f"critical sections overlapped on {harness.overlaps}"
    for key in KEYS:
        assert harness.enters_of(key) == arrivals[key], "FIFO order broken"
        sections = [(w, rid) for w, rid, k in harness.journal if k == key]
        # enter i, exit i, enter j, exit j ...: never two sections of one key at once
        assert [w for w, _ in sections] == ["enter", "exit"] * len(arrivals[key])
        assert all(sections[i][1] == sections[i + 1][1] for i in range(0, len(sections), 2))
    assert len(queue) == 0, "the key table must be empty when nobody holds or waits"
    return harness


def schedules(kinds: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, int, str]]]:
    arrive = st.tuples(st.just("arrive"), st.integers(0, len(KEYS) - 1), kinds)
    release = st.tuples(st.just("release"), st.integers(0, 5), st.just(""))
    return st.lists(st.one_of(arrive, arrive, release), min_size=1, max_size=14)


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(steps=schedules(st.just("thread")), final=st.lists(st.integers(0, 5), max_size=6))
def test_threads_exclusive_fifo_independent_and_leave_nothing(
    steps: list[tuple[str, int, str]], final: list[int]
) -> None:
    run_schedule(steps, final, loop=None)


@PROPERTY
@given(steps=schedules(st.just("task")), final=st.lists(st.integers(0, 5), max_size=6))
def test_tasks_exclusive_fifo_independent_and_leave_nothing(
    steps: list[tuple[str, int, str]], final: list[int]
) -> None:
    with loop_thread() as loop:
        run_schedule(steps, final, loop=loop)


@PROPERTY
@given(
    steps=schedules(st.sampled_from(["thread", "task"])),
    final=st.lists(st.integers(0, 5), max_size=6),
)
def test_loop_tasks_and_wsgi_threads_share_one_queue(
    steps: list[tuple[str, int, str]], final: list[int]
) -> None:
    with loop_thread() as loop:
        run_schedule(steps, final, loop=loop)


class LIFO(ObservedQueue):
    """A broken queue for the control: the newest waiter jumps the line."""

    def release(self, key: str) -> None:
        with self._mutex:
            waiters = self._keys[key]
            if waiters:
                waiters.rotate(1)
        super().release(key)


class Barging(ObservedQueue):
    """A broken queue for the control: a second caller of a held key gets it too."""

    def _enqueue(self, key: str, max_waiters: int, kind: Any, **more: Any) -> Any:
        if key in self._keys and not self._keys[key]:
            return None  # "held" but nobody waits: let it in
        return super()._enqueue(key, max_waiters, kind, **more)

    def release(self, key: str) -> None:
        with self._mutex:
            if key not in self._keys:
                return
        super().release(key)


@pytest.mark.parametrize(
    ("queue_type", "kind"),
    [
        pytest.param(LIFO, "thread", id="lifo-threads"),
        pytest.param(LIFO, "task", id="lifo-tasks"),
        pytest.param(Barging, "thread", id="overlap-threads"),
        pytest.param(Barging, "task", id="overlap-tasks"),
    ],
)
def test_control_the_checks_catch_a_broken_queue(
    queue_type: type[ObservedQueue], kind: str
) -> None:
    steps = [("arrive", 0, kind)] * 3
    with loop_thread() as loop, pytest.raises(AssertionError):
        run_schedule(steps, [], loop=loop, queue_type=queue_type)


# -- deterministic cases -------------------------------------------------------------------


def hold_in_thread(queue: KeyedQueue, key: str) -> tuple[threading.Event, threading.Thread]:
    """A thread that holds ``key`` until the returned event is set."""
    held, leave = threading.Event(), threading.Event()

    def body() -> None:
        queue.acquire(key, timeout=None, max_waiters=10)
        held.set()
        leave.wait(WAIT)
        queue.release(key)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert held.wait(WAIT)
    return leave, thread


def test_a_held_key_does_not_delay_another_key() -> None:
    queue = KeyedQueue()
    leave, thread = hold_in_thread(queue, "a")
    done = threading.Event()

    def other() -> None:
        queue.acquire("b", timeout=None, max_waiters=10)
        queue.release("b")
        done.set()

    threading.Thread(target=other, daemon=True).start()
    assert done.wait(WAIT)  # "b" entered and finished while "a" is still held
    assert queue.holds("a")
    assert not queue.holds("b")
    leave.set()
    thread.join(WAIT)
    assert len(queue) == 0


def test_thread_timeout_raises_and_the_line_moves_on() -> None:
    queue = KeyedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)
    with pytest.raises(LockTimeout):
        queue.acquire("k", timeout=0.01, max_waiters=10)
    assert queue.waiting("k") == 0
    assert queue.holds("k")
    queue.release("k")
    assert len(queue) == 0
    queue.acquire("k", timeout=0.01, max_waiters=10)  # free again: taken at once
    queue.release("k")
    assert len(queue) == 0


def test_thread_timeout_skips_the_timed_out_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter times out while another waits behind it: the turn goes to the one behind."""
    queue = ObservedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)
    later = Request(1, "k", "thread")
    entered = threading.Event()
    original = queue_module._ThreadWaiter.wait

    def times_out_once_the_next_is_queued(self: Any, timeout: float | None) -> bool:
        if timeout is None:
            return original(self, None)
        assert later.queued.wait(WAIT)
        return False

    monkeypatch.setattr(queue_module._ThreadWaiter, "wait", times_out_once_the_next_is_queued)

    def patient() -> None:
        CURRENT.set(later)
        queue.acquire("k", timeout=None, max_waiters=10)
        entered.set()
        queue.release("k")

    first = Request(0, "k", "thread")
    thread = threading.Thread(target=patient, daemon=True)
    starter = threading.Thread(target=lambda: (first.queued.wait(WAIT), thread.start()))
    starter.start()
    token = CURRENT.set(first)
    try:
        with pytest.raises(LockTimeout):
            queue.acquire("k", timeout=5.0, max_waiters=10)
    finally:
        CURRENT.reset(token)
        starter.join(WAIT)
    assert queue.waiting("k") == 1
    assert not entered.is_set()
    queue.release("k")
    assert entered.wait(WAIT)
    thread.join(WAIT)
    assert len(queue) == 0


def test_thread_granted_as_it_times_out_keeps_the_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grant lands between the wait's timeout and the re-check: the waiter keeps it."""
    original = queue_module._ThreadWaiter.wait

    def late(self: Any, timeout: float | None) -> bool:
        original(self, None)  # woken by the grant...
        return False  # ...but report a timeout, as a race would

    monkeypatch.setattr(queue_module._ThreadWaiter, "wait", late)
    queue = ObservedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)
    request = Request(0, "k", "thread")
    got: list[str] = []

    def waiter() -> None:
        CURRENT.set(request)
        queue.acquire("k", timeout=0.01, max_waiters=10)
        got.append("held")
        queue.release("k")

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert request.queued.wait(WAIT)
    queue.release("k")
    thread.join(WAIT)
    assert got == ["held"]
    assert len(queue) == 0


@pytest.mark.parametrize("max_waiters", [pytest.param(0, id="none"), pytest.param(2, id="two")])
def test_queue_full_beyond_max_waiters_threads(max_waiters: int) -> None:
    queue = ObservedQueue()
    queue.acquire("k", timeout=None, max_waiters=max_waiters)
    waiting: list[threading.Thread] = []
    for rid in range(max_waiters):
        request = Request(rid, "k", "thread")

        def body(request: Request = request) -> None:
            CURRENT.set(request)
            queue.acquire("k", timeout=None, max_waiters=max_waiters)
            queue.release("k")

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        assert request.queued.wait(WAIT)
        waiting.append(thread)
    with pytest.raises(QueueFull):
        queue.acquire("k", timeout=None, max_waiters=max_waiters)
    assert queue.waiting("k") == max_waiters
    queue.acquire("other", timeout=None, max_waiters=max_waiters)  # other keys unaffected
    queue.release("other")
    queue.release("k")
    for thread in waiting:
        thread.join(WAIT)
    assert len(queue) == 0


def test_queue_full_beyond_max_waiters_tasks() -> None:
    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=1) is None
        waiter = queue.join("k", max_waiters=1)
        assert waiter is not None
        with pytest.raises(QueueFull):
            queue.join("k", max_waiters=1)
        queue.release("k")
        await queue.wait(waiter, None)
        queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


def test_task_timeout_raises_and_leaves_the_line() -> None:
    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=10) is None
        first = queue.join("k", max_waiters=10)
        second = queue.join("k", max_waiters=10)
        assert first is not None
        assert second is not None
        with pytest.raises(LockTimeout):
            await queue.wait(first, 0.01)
        assert queue.waiting("k") == 1
        queue.release("k")  # goes to the second, skipping the timed-out first
        await queue.wait(second, None)
        assert queue.waiting("k") == 0
        queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


def test_cancelling_a_waiting_task_leaves_the_line() -> None:
    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=10) is None
        waiter = queue.join("k", max_waiters=10)
        assert waiter is not None
        task = asyncio.ensure_future(queue.wait(waiter, None))
        await asyncio.sleep(0)  # let it start awaiting (one loop step, not a timed wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queue.waiting("k") == 0
        queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    "granter",
    [
        pytest.param("loop", id="granted-on-the-loop"),
        pytest.param("thread", id="granted-by-thread"),
    ],
)
@pytest.mark.parametrize(
    "behind", [pytest.param(False, id="alone"), pytest.param(True, id="with-next-waiter")]
)
def test_a_grant_racing_a_cancel_is_passed_on(granter: str, behind: bool) -> None:
    """The turn is granted, then the task is cancelled before it runs: nothing is lost."""

    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=10) is None
        waiter = queue.join("k", max_waiters=10)
        assert waiter is not None
        following = queue.join("k", max_waiters=10) if behind else None
        task = asyncio.ensure_future(queue.wait(waiter, None))
        await asyncio.sleep(0)
        if granter == "loop":
            queue.release("k")
        else:  # a WSGI thread releases; the wake-up is still in flight to the loop
            thread = threading.Thread(target=queue.release, args=("k",))
            thread.start()
            thread.join(WAIT)
        assert waiter.granted
        task.cancel()  # before the task could run with its turn
        with pytest.raises(asyncio.CancelledError):
            await task
        if following is not None:
            await asyncio.wait_for(queue.wait(following, None), WAIT)  # it got the turn
            assert queue.holds("k")
            queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


def test_abandon_raises_its_error_in_the_waiter_and_leaves_the_line() -> None:
    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=10) is None
        waiter = queue.join("k", max_waiters=10)
        assert waiter is not None
        task = asyncio.ensure_future(queue.wait(waiter, None))
        await asyncio.sleep(0)
        queue.abandon(waiter, ClientGone())
        with pytest.raises(ClientGone):
            await task
        assert queue.waiting("k") == 0
        queue.abandon(waiter, ClientGone())  # twice: harmless
        queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


def test_abandon_after_the_grant_is_ignored() -> None:
    """A disconnect or timer firing just after the grant must not lose the turn."""

    async def main() -> None:
        queue = KeyedQueue()
        assert queue.join("k", max_waiters=10) is None
        waiter = queue.join("k", max_waiters=10)
        assert waiter is not None
        queue.release("k")
        queue.abandon(waiter, LockTimeout("late"))
        await queue.wait(waiter, None)  # returns: the waiter holds the key
        assert queue.holds("k")
        queue.release("k")
        assert len(queue) == 0

    asyncio.run(main())


def test_task_waiter_woken_from_a_thread() -> None:
    async def main() -> None:
        queue = KeyedQueue()
        leave, thread = hold_in_thread(queue, "k")
        waiter = queue.join("k", max_waiters=10)
        assert isinstance(waiter, TaskWaiter)
        leave.set()  # the WSGI thread releases and wakes this task through the loop
        await asyncio.wait_for(queue.wait(waiter, None), WAIT)
        queue.release("k")
        await asyncio.to_thread(thread.join, WAIT)
        assert len(queue) == 0

    asyncio.run(main())


# -- a cancel in the same loop turn as an abandon (issue 9) ---------------------------------


class NonIdempotentForget(KeyedQueue):
    """The control: the queue before the fix, whose second ``_forget`` of a waiter raised."""

    def _forget(self, waiter: Any) -> None:
        waiters = self._keys[waiter.key]
        assert waiters is not None
        waiters.remove(waiter)


@pytest.mark.parametrize(
    "error",
    [pytest.param(ClientGone(), id="disconnect"), pytest.param(LockTimeout("t"), id="timer")],
)
@pytest.mark.parametrize(
    "holder_leaves",
    [pytest.param(False, id="key-still-held"), pytest.param(True, id="key-released-between")],
)
@pytest.mark.parametrize(
    ("queue_type", "raised"),
    [
        pytest.param(KeyedQueue, asyncio.CancelledError, id="fixed"),
        pytest.param(NonIdempotentForget, (ValueError, KeyError), id="control-before-the-fix"),
    ],
)
def test_a_cancel_in_the_same_turn_as_an_abandon_raises_cancelled_error(
    error: BaseException, holder_leaves: bool, queue_type: type[KeyedQueue], raised: Any
) -> None:
    """abandon() takes the waiter out and sets its error; the task is cancelled before it runs."""

    async def main() -> None:
        queue = queue_type()
        assert queue.join("k", max_waiters=10) is None
        waiter = queue.join("k", max_waiters=10)
        assert waiter is not None
        task = asyncio.ensure_future(queue.wait(waiter, None))
        await asyncio.sleep(0)  # one loop step: the task now awaits its turn
        queue.abandon(waiter, error)  # the disconnect or the timer: out of line, error set
        if holder_leaves:
            queue.release("k")  # nobody waits any more: the key's entry goes
        task.cancel()  # same turn: the task has not run since
        with pytest.raises(raised):
            await task
        if queue_type is KeyedQueue:
            assert queue.waiting("k") == 0
            if not holder_leaves:
                queue.release("k")
            assert len(queue) == 0

    asyncio.run(main())


def test_a_cancel_in_the_same_turn_as_the_disconnect_through_the_core() -> None:
    """Core.enter_async: the client-gone callback abandons, then the task is cancelled."""
    from sessionlock.core import Admission, Core

    async def main() -> None:
        core = Core(backend="memory://", key="cookie:s")
        assert core.queue.join("k", max_waiters=10) is None  # somebody holds the session
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(core.enter_async(Admission("k", None), lambda: gone))
        await asyncio.sleep(0)  # the task waits in line, watching ``gone``
        gone.set_result(None)  # the client leaves: _client_gone is scheduled
        await asyncio.sleep(0)  # one step: _client_gone ran and abandoned the waiter
        task.cancel()  # the server cancels the request in that same turn
        with pytest.raises(asyncio.CancelledError):
            await task
        assert core.queue.waiting("k") == 0
        core.queue.release("k")
        assert len(core.queue) == 0

    asyncio.run(main())


# -- a forked child starts with an empty queue ----------------------------------------------


def _in_child(probe: Any) -> int:
    """Run ``probe`` in a forked child; its exit code (0: probe returned True)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads around
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if probe() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize(
    "reset", [pytest.param(True, id="reset"), pytest.param(False, id="control-not-reset")]
)
def test_a_forked_child_starts_with_an_empty_queue(reset: bool) -> None:
    queue = KeyedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)  # the parent holds "k" as it forks
    if not reset:  # the control: a queue the at-fork hook does not know
        queue_module._QUEUES.discard(queue)

    def probe() -> bool:
        if len(queue) != 0 or not queue.try_acquire("k"):
            return False
        queue.release("k")
        return len(queue) == 0

    code = _in_child(probe)
    assert code == (0 if reset else 2)
    assert queue.holds("k")  # the parent's hold is untouched
    queue.release("k")
    assert len(queue) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_parents_holder_releasing_in_the_child_is_harmless() -> None:
    queue = KeyedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)

    def probe() -> bool:
        queue.release("k")  # the forking thread goes on in the child and leaves its key
        return len(queue) == 0 and queue.try_acquire("k")

    assert _in_child(probe) == 0
    queue.release("k")


# -- the cap on waiting threads -------------------------------------------------------------


def test_threads_beyond_max_threads_are_refused_and_other_keys_still_run() -> None:
    queue = ObservedQueue()
    queue.acquire("k", timeout=None, max_waiters=10, max_threads=1)  # held: not waiting
    request = Request(0, "k", "thread")

    def body() -> None:
        CURRENT.set(request)
        queue.acquire("k", timeout=None, max_waiters=10, max_threads=1)
        queue.release("k")

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert request.queued.wait(WAIT)
    assert queue.threads_waiting == 1
    with pytest.raises(QueueFull, match="threads of this process"):
        queue.acquire("k", timeout=None, max_waiters=10, max_threads=1)
    queue.acquire("j", timeout=None, max_waiters=10, max_threads=1)
    with pytest.raises(QueueFull):  # another busy key too: the cap is per process
        queue.acquire("j", timeout=None, max_waiters=10, max_threads=1)
    queue.release("j")
    queue.acquire("free", timeout=None, max_waiters=10, max_threads=1)  # no wait: taken
    queue.release("free")
    assert not queue.reserve_thread(1)  # a backend wait is counted alike
    assert queue.reserve_thread(None)
    queue.unreserve_thread()
    queue.release("k")  # the waiter gets its turn: no longer counted
    thread.join(WAIT)
    assert queue.threads_waiting == 0
    assert len(queue) == 0


def test_timed_out_threads_are_no_longer_counted() -> None:
    queue = KeyedQueue()
    queue.acquire("k", timeout=None, max_waiters=10)
    with pytest.raises(LockTimeout):
        queue.acquire("k", timeout=0.01, max_waiters=10, max_threads=1)
    assert queue.threads_waiting == 0
    queue.release("k")
