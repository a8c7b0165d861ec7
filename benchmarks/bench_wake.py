"""Wake latency: from the holder's release to the next waiter running, vs the raw primitive.

    .venv/bin/python -m benchmarks.bench_wake [--quick]

Threads: a holder releases while a second thread is blocked waiting; raw is a
``threading.Lock`` handed between the two threads, ours is ``KeyedQueue.acquire/release``
(and the full ``Core.enter/leave`` over the memory backend). Tasks: on one event loop, raw is
``future.set_result`` waking the task that awaits it, ours is ``KeyedQueue.join/wait/release``
(and ``Core.enter_async/leave_async``). Each sample times release -> waiter's first
instruction; samples of all variants are interleaved. Target: within 2x of the raw primitive.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

from sessionlock.core import Admission, Core
from sessionlock.queue import KeyedQueue

from ._figures import Figure, print_figures
from ._table import median, parse_args, percentile, print_table

TARGET = 2.0
KEY = "k"
TIMEOUT = 25.0  # the Core's default: a waiter arms a timer, as in production
MAX_WAITERS = 16
ENVIRONS = [{"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": "sid=s"}] * 2
SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", b"sid=s")]}


# -- threads ----------------------------------------------------------------------------------


class ThreadLock:
    """Raw: one ``threading.Lock`` handed from the holder to the blocked thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def hold(self) -> None:
        self.lock.acquire()

    def wait(self) -> None:
        self.lock.acquire()

    def handover(self) -> None:
        self.lock.release()

    def done(self) -> None:
        self.lock.release()


class ThreadQueue:
    """Ours: a thread waiter of :class:`KeyedQueue` (a per-waiter lock, direct hand-off)."""

    def __init__(self) -> None:
        self.queue = KeyedQueue()

    def hold(self) -> None:
        self.queue.acquire(KEY, timeout=TIMEOUT, max_waiters=MAX_WAITERS)

    def wait(self) -> None:
        self.queue.acquire(KEY, timeout=TIMEOUT, max_waiters=MAX_WAITERS)

    def handover(self) -> None:
        self.queue.release(KEY)

    def done(self) -> None:
        self.queue.release(KEY)


class ThreadCore:
    """Ours, whole: ``Core.enter/leave`` with the memory backend's lease."""

    def __init__(self) -> None:
        self.core = Core(backend="memory://", key="cookie:sid")
        self.held: Admission | None = None
        self.waiting: Admission | None = None

    def _enter(self) -> Admission:
        admission = self.core.admit(ENVIRONS[0])
        assert admission is not None
        self.core.enter(admission)
        return admission

    def hold(self) -> None:
        self.held = self._enter()

    def wait(self) -> None:
        self.waiting = self._enter()

    def handover(self) -> None:
        assert self.held is not None
        self.core.leave(self.held)

    def done(self) -> None:
        assert self.waiting is not None
        self.core.leave(self.waiting)


ThreadVariant = ThreadLock | ThreadQueue | ThreadCore


class Waiter(threading.Thread):
    """The second thread: blocks in ``wait()`` on request and reports when it woke."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.jobs: queue.SimpleQueue[ThreadVariant | None] = queue.SimpleQueue()
        self.woke: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.ready = threading.Event()

    def run(self) -> None:
        while (variant := self.jobs.get()) is not None:
            self.ready.set()
            variant.wait()
            woke = time.perf_counter_ns()
            variant.done()
            self.woke.put(woke)

    def sample(self, variant: ThreadVariant) -> float:
        """One hand-off, in µs."""
        variant.hold()
        self.ready.clear()
        self.jobs.put(variant)
        self.ready.wait()
        time.sleep(0.0005)  # let the waiter reach its blocking call
        released = time.perf_counter_ns()
        variant.handover()
        return (self.woke.get() - released) / 1000


# -- tasks ------------------------------------------------------------------------------------


class TaskFuture:
    """Raw: the holder resolves a future; the task awaiting it resumes."""

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None

    async def hold(self) -> None:
        self.future = asyncio.get_running_loop().create_future()

    async def wait(self) -> None:
        assert self.future is not None
        await self.future

    async def handover(self) -> None:
        assert self.future is not None
        self.future.set_result(None)

    async def done(self) -> None:
        pass


class TaskQueue:
    """Ours: a task waiter of :class:`KeyedQueue` (a future, a timeout timer)."""

    def __init__(self) -> None:
        self.queue = KeyedQueue()

    async def hold(self) -> None:
        assert self.queue.join(KEY, max_waiters=MAX_WAITERS) is None

    async def wait(self) -> None:
        waiter = self.queue.join(KEY, max_waiters=MAX_WAITERS)
        assert waiter is not None
        await self.queue.wait(waiter, TIMEOUT)

    async def handover(self) -> None:
        self.queue.release(KEY)

    async def done(self) -> None:
        self.queue.release(KEY)


class TaskCore:
    """Ours, whole: ``Core.enter_async/leave_async`` (with its client-gone watcher)."""

    def __init__(self) -> None:
        self.core = Core(backend="memory://", key="cookie:sid")
        self.held: Admission | None = None
        self.waiting: Admission | None = None

    async def _enter(self) -> Admission:
        admission = self.core.admit(SCOPE)
        assert admission is not None
        await self.core.enter_async(admission, _never)
        return admission

    async def hold(self) -> None:
        self.held = await self._enter()

    async def wait(self) -> None:
        self.waiting = await self._enter()

    async def handover(self) -> None:
        assert self.held is not None
        await self.core.leave_async(self.held)

    async def done(self) -> None:
        assert self.waiting is not None
        await self.core.leave_async(self.waiting)


async def _never() -> None:
    await asyncio.get_running_loop().create_future()


TaskVariant = TaskFuture | TaskQueue | TaskCore


async def task_sample(variant: TaskVariant) -> float:
    """One hand-off between two tasks, in µs."""

    async def waiter() -> int:
        await variant.wait()
        woke = time.perf_counter_ns()
        await variant.done()
        return woke

    await variant.hold()
    task = asyncio.get_running_loop().create_task(waiter())
    for _ in range(3):  # let the waiter reach its await (and start its watcher)
        await asyncio.sleep(0)
    released = time.perf_counter_ns()
    await variant.handover()
    return (await task - released) / 1000


# -- measurement ------------------------------------------------------------------------------


GROUPS = {
    "thread": ["raw threading.Lock", "KeyedQueue thread waiter", "Core.enter/leave (memory)"],
    "task": ["raw future.set_result", "KeyedQueue task waiter", "Core.enter_async/leave_async"],
}


def measure(quick: bool) -> dict[str, list[float]]:
    """Wake latencies (µs) per variant (the names of :data:`GROUPS`), interleaved."""
    samples = 300 if quick else 3000
    thread_variants: list[ThreadVariant] = [ThreadLock(), ThreadQueue(), ThreadCore()]
    task_variants: list[TaskVariant] = [TaskFuture(), TaskQueue(), TaskCore()]
    threads = dict(zip(GROUPS["thread"], thread_variants, strict=True))
    tasks = dict(zip(GROUPS["task"], task_variants, strict=True))
    waiter = Waiter()
    waiter.start()
    loop = asyncio.new_event_loop()
    results: dict[str, list[float]] = {name: [] for name in [*threads, *tasks]}
    names: list[str] = [*threads, *tasks]
    for i in range(samples + samples // 10):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            if name in threads:
                latency = waiter.sample(threads[name])
            else:
                latency = loop.run_until_complete(task_sample(tasks[name]))
            if i >= samples // 10:  # the first tenth warms up
                results[name].append(latency)
    waiter.jobs.put(None)
    waiter.join()
    loop.close()
    return results


def figures_from(results: dict[str, list[float]]) -> list[Figure]:
    """The whole path (Core) against the raw primitive, per kind of waiter."""
    out = []
    for kind, group in GROUPS.items():
        raw, ours = results[group[0]], results[group[-1]]
        raw50, raw99 = median(raw), percentile(raw, 99)
        p50, p99 = median(ours), percentile(ours, 99)
        out.append(
            Figure(
                f"in-process wake, {kind}s ({group[-1]})",
                f"p50 {p50:.1f} µs ({p50 / raw50:.2f}x), p99 {p99:.1f} µs ({p99 / raw99:.2f}x)",
                f"{group[0]} p50 {raw50:.1f}, p99 {raw99:.1f} µs",
                f"p50, p99 <= {TARGET:g}x raw",
                p50 / raw50 <= TARGET and p99 / raw99 <= TARGET,
            )
        )
    return out


def figures(quick: bool) -> list[Figure]:
    return figures_from(measure(quick))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    results = measure(args.quick)
    samples = len(next(iter(results.values())))
    print(f"wake latency, release -> next waiter running: {samples} samples per variant")
    rows: list[list[Any]] = []
    for kind, group in GROUPS.items():
        raw50 = median(results[group[0]])
        raw99 = percentile(results[group[0]], 99)
        for name in group:
            p50, p99 = median(results[name]), percentile(results[name], 99)
            r50, r99 = p50 / raw50, p99 / raw99
            verdicts = ["" if name == group[0] else _verdict(r) for r in (r50, r99)]
            figures = [f"{p50:.1f}", f"{p99:.1f}", f"{r50:.2f}", f"{r99:.2f}"]
            rows.append([kind, name, *figures, *verdicts])
    headers = ["waiter", "variant", "p50 µs", "p99 µs", "p50/raw", "p99/raw"]
    headers += ["p50 <= 2x", "p99 <= 2x"]
    print_table(headers, rows)
    print()
    print_figures(figures_from(results))


def _verdict(ratio: float) -> str:
    return "yes" if ratio <= TARGET else "NO"


if __name__ == "__main__":
    main()
