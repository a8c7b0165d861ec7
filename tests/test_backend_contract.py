"""One contract, every backend: each behaviour runs through the Core against ALL_BACKENDS.

Cross-process exclusion runs for backends whose lease is shared (``shared = True``), with
real processes; every concurrency test has its control (the same work without the lock).
The shared (reader) lease cases ask the backends directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sessionlock.asgi import SessionLockMiddleware as ASGISessionLockMiddleware
from sessionlock.backends import Backend, _shared, close_all, from_url
from sessionlock.backends.file import FileBackend
from sessionlock.backends.memory import MemoryBackend
from sessionlock.backends.redis import RedisBackend
from sessionlock.core import Admission, Core
from sessionlock.errors import ConfigurationError, LockTimeout
from sessionlock.wsgi import SessionLockMiddleware
from tests.redis_server import flush, shared_server

SECRET = b"contract-test-secret-0123456789"
KEY = "0123456789abcdef0123456789abcdef"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeBackend = Callable[..., Backend]


@dataclass(frozen=True)
class Kind:
    """How to make one backend in this process, and its URL for other processes."""

    make: Callable[..., Backend]
    url: Callable[[Path], str] | None  # None: not shared across processes
    # Whether the store keeps at most max_values; redis:// bounds values by their TTLs
    # (every key has one) and takes no max_values.
    bounded: bool = True
    # Whether the lease itself excludes (memory's is free: Core's in-process queue does it).
    excludes: bool = True
    # Probes of who waits for a key, for the shared-lease order tests (None: no probe yet).
    # in_line(tmp, key): a count that grows by one as a wait enters the line every instance
    # (process) of the backend shares, and does not shrink while nobody is let in.
    in_line: Callable[[Path, str], int] | None = None
    # waiting(backend, key): requests waiting for the key in this one instance whose first
    # only enters that line (file://: one kernel wait per process, the rest queue behind it
    # in the process); 0 for a backend whose every wait is in the line itself.
    waiting: Callable[[Backend, str], int] | None = None


_flushed: set[Path] = set()


def _redis_url(tmp: Path) -> str:
    """The run's redis-server, emptied once per test (tmp: the test's own directory)."""
    server = shared_server()
    if tmp not in _flushed:
        _flushed.add(tmp)
        flush(server)
    return server.url


def _file_tickets(tmp: Path, key: str) -> int:
    """file://: every wait in the kernel's line appends one ticket byte to the lock file (the
    tests using it store no record there)."""
    try:
        return (tmp / "locks" / f"{key}.lock").stat().st_size
    except FileNotFoundError:
        return 0


def _file_waiting(backend: Backend, key: str) -> int:
    assert isinstance(backend, FileBackend)
    return backend.waiting(key)


def _redis_queued(tmp: Path, key: str) -> int:
    """redis://: the length of the key's waiting line (as tests/test_redis_backend.py)."""
    reply = shared_server().command("LLEN", f"sessionlock:{{{key}}}:queue")
    return int(reply.decode()[1:])


ALL_BACKENDS = [
    pytest.param(
        Kind(lambda tmp, **options: MemoryBackend(**options), None, excludes=False), id="memory"
    ),
    pytest.param(
        Kind(
            lambda tmp, **options: FileBackend(tmp / "locks", **options),
            lambda tmp: f"file://{tmp / 'locks'}",
            in_line=_file_tickets,
            waiting=_file_waiting,
        ),
        id="file",
    ),
    pytest.param(
        Kind(
            lambda tmp, **options: RedisBackend(_redis_url(tmp), **options),
            _redis_url,
            bounded=False,
            in_line=_redis_queued,
            waiting=lambda backend, key: 0,  # every wait is in Redis's line: in_line
        ),
        id="redis",
    ),
]


@pytest.fixture(params=ALL_BACKENDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_backend(kind: Kind, tmp_path: Path) -> Iterator[MakeBackend]:
    made: list[Backend] = []

    def make(**kwargs: Any) -> Backend:
        backend = kind.make(tmp_path, **kwargs)
        made.append(backend)
        # A file backend's start sweep removes the lock files nobody holds (a new file, a new
        # stamp): a test that compares stamps across instances starts after it.
        swept = getattr(backend, "swept", None)
        if isinstance(swept, threading.Event):
            assert swept.wait(30)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def shared_url(kind: Kind, tmp_path: Path) -> str:
    """The URL of a backend shared by processes; skips the others."""
    if kind.url is None:
        pytest.skip("the lease of this backend is per process")
    kind.make(tmp_path).close()  # made once, so processes race only on the locks
    return kind.url(tmp_path)


@pytest.fixture
def backend(make_backend: MakeBackend) -> Backend:
    return make_backend()


def _core(backend: Backend, **options: Any) -> Core:
    return Core(backend=backend, secret=SECRET, **options)


def _admission(core: Core, raw_key: str = "session-1") -> Admission:
    return core.admit({"REQUEST_METHOD": "GET", "HTTP_X_S": raw_key}) or pytest.fail("no key")


# -- in one process ---------------------------------------------------------------------


def _increment_many(core: Core | None, threads: int = 8, rounds: int = 25) -> int:
    """Threads each doing read / yield / write on one counter; returns the final count."""
    box = {"count": 0}
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(rounds):
            admission = _admission(core) if core is not None else None
            if core is not None and admission is not None:
                core.enter(admission)
            try:
                seen = box["count"]
                time.sleep(0.0005)  # the window in which another request reads the same count
                box["count"] = seen + 1
            finally:
                if core is not None and admission is not None:
                    core.leave(admission)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return box["count"]


def test_mutual_exclusion_in_process(backend: Backend) -> None:
    core = _core(backend, key="header:X-S", max_waiters=64)
    assert _increment_many(core) == 8 * 25


def test_control_without_the_lock_updates_are_lost() -> None:
    assert _increment_many(None) < 8 * 25


def test_fifo_in_process(backend: Backend) -> None:
    core = _core(backend, key="header:X-S", max_waiters=64)
    order: list[int] = []

    async def main() -> None:
        holder = _admission(core)
        await core.enter_async(holder, asyncio.Event().wait)

        async def request(number: int) -> None:
            admission = _admission(core)
            await core.enter_async(admission, asyncio.Event().wait)
            order.append(number)
            await asyncio.sleep(0)  # let the others run: they must still wait
            await core.leave_async(admission)

        tasks = [asyncio.ensure_future(request(n)) for n in range(10)]
        for _ in range(3):
            await asyncio.sleep(0)  # every task joins the line, in creation order
        await core.leave_async(holder)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == list(range(10))


def test_timeout_refuses_and_keeps_nothing(backend: Backend) -> None:
    core = _core(backend, key="header:X-S", timeout=0.05)
    holder = _admission(core)
    core.enter(holder)
    with pytest.raises(LockTimeout):
        core.enter(_admission(core))
    core.leave(holder)
    again = _admission(core)
    core.enter(again)  # nothing was left held by the refused request
    core.leave(again)
    assert len(core.queue) == 0


def test_different_keys_are_independent(backend: Backend) -> None:
    core = _core(backend, key="header:X-S", timeout=5.0)
    first = _admission(core, "session-1")
    core.enter(first)
    second = _admission(core, "session-2")
    core.enter(second)  # would time out if keys shared a lock
    assert second.waited < 5.0
    core.leave(second)
    core.leave(first)


def test_lease_released_when_the_app_raises(backend: Backend) -> None:
    def failing_app(environ: Any, start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    middleware = SessionLockMiddleware(
        failing_app, backend=backend, key="header:X-S", secret=SECRET, timeout=5.0
    )
    environ = {"REQUEST_METHOD": "GET", "HTTP_X_S": "session-1", "PATH_INFO": "/"}
    with pytest.raises(RuntimeError, match="boom"):
        middleware(environ, lambda *args: None)
    core = middleware.core
    assert len(core.queue) == 0
    lease = backend.try_acquire(_admission(core).key)
    assert lease is not None
    backend.release(lease)


def test_async_timeout_and_cancel_leave_nothing_held(backend: Backend) -> None:
    core = _core(backend, key="header:X-S", timeout=0.05)

    async def main() -> None:
        holder = _admission(core)
        await core.enter_async(holder, asyncio.Event().wait)
        with pytest.raises(LockTimeout):
            await core.enter_async(_admission(core), asyncio.Event().wait)
        waiter = asyncio.ensure_future(core.enter_async(_admission(core), asyncio.Event().wait))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await core.leave_async(holder)
        again = _admission(core)
        await core.enter_async(again, asyncio.Event().wait)
        await core.leave_async(again)

    asyncio.run(main())
    assert len(core.queue) == 0


# -- the value store ---------------------------------------------------------------------


def test_values_get_set_delete(backend: Backend) -> None:
    assert backend.get("note-1") is None
    backend.set("note-1", "first value; with = signs\nand lines", None)
    assert backend.get("note-1") == "first value; with = signs\nand lines"
    backend.set("note-1", "second", None)
    assert backend.get("note-1") == "second"
    backend.delete("note-1")
    assert backend.get("note-1") is None
    backend.delete("note-1")  # absent is fine


def test_values_expire_after_ttl(make_backend: MakeBackend) -> None:
    clock = Clock()
    backend = make_backend(clock=clock)
    backend.set("note-1", "soon gone", 10.0)
    backend.set("note-2", "kept", None)
    clock.now += 9.9
    assert backend.get("note-1") == "soon gone"
    clock.now += 0.2
    assert backend.get("note-1") is None
    assert backend.get("note-2") == "kept"
    backend.set("note-1", "back", 10.0)
    assert backend.get("note-1") == "back"


def test_values_are_shared_by_instances_of_a_shared_backend(
    shared_url: str, make_backend: MakeBackend
) -> None:
    first, second = make_backend(), make_backend()
    first.set("note-1", "from the first", None)
    assert second.get("note-1") == "from the first"
    assert first.secret() == second.secret()


def _leased(backend: Backend) -> Any:
    lease = backend.try_acquire(KEY)
    assert lease is not None
    return lease


def test_stamps_change_exactly_when_marked(make_backend: MakeBackend) -> None:
    """Equal stamps mean nobody marked the key in between, in this instance or another."""
    first, second = make_backend(), make_backend()
    lease = _leased(first)
    stamp = first.mark(lease)
    if stamp is None:  # a backend that keeps no stamps says so: nothing may be cached
        assert lease.stamp is None
        first.release(lease)
        return
    assert lease.stamp == stamp
    first.release(lease)
    again = _leased(second)  # another instance (another process's view) sees the mark
    assert again.stamp == stamp
    second.release(again)
    lease = _leased(first)
    assert lease.stamp == stamp  # unmarked since: still the same
    newer = first.mark(lease)
    assert newer is not None
    assert newer != stamp
    first.release(lease)
    again = _leased(second)
    assert again.stamp == newer
    second.release(again)


def test_values_are_capped_and_the_last_set_is_kept(kind: Kind, make_backend: MakeBackend) -> None:
    """A flood of distinct keys: at most ``max_values`` stay, and each set one is readable."""
    if not kind.bounded:
        pytest.skip("bounded by TTLs, not by a count (tests/test_redis_backend.py)")
    backend = make_backend(max_values=256)  # file://: one value per bucket
    keys = [f"{number:032x}" for number in range(1000)]
    for key in keys:
        backend.set(key, f"value of {key}", 3600.0)
        assert backend.get(key) == f"value of {key}"
    assert sum(backend.get(key) is not None for key in keys) <= 256
    assert backend.get(keys[-1]) == f"value of {keys[-1]}"


@pytest.mark.parametrize("max_values", [0, -1, 2.5, True])
def test_max_values_must_be_a_positive_int(kind: Kind, tmp_path: Path, max_values: Any) -> None:
    if not kind.bounded:
        pytest.skip("takes no max_values")
    with pytest.raises(ConfigurationError, match="max_values"):
        kind.make(tmp_path, max_values=max_values)


def test_memory_set_removes_expired_values_as_it_goes() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock)
    for number in range(100):
        backend.set(f"old-{number}", "x", 10.0)
    clock.now += 11
    for number in range(25):
        backend.set(f"new-{number}", "y", 10.0)
    assert len(backend) == 25  # 4 expired ones removed per set, no full scan


# -- across processes --------------------------------------------------------------------


def _spawn() -> Any:
    return multiprocessing.get_context("spawn")


def _counting_process(url: str, counter: str, rounds: int, locked: bool, start: Any) -> None:
    core = Core(backend=url, key="header:X-S", timeout=60.0)
    start.wait(60)  # every process counts at once, whatever its spawn delay
    for _ in range(rounds):
        admission = _admission(core)
        if locked:
            core.enter(admission)
        try:
            seen = int(Path(counter).read_text() or "0")
            time.sleep(0.001)  # the read-modify-write window
            Path(counter).write_text(str(seen + 1))
        finally:
            if locked:
                core.leave(admission)


def _run_counting(
    url: str, counter: Path, *, locked: bool, processes: int = 4, rounds: int = 30
) -> int:
    counter.write_text("0")
    context = _spawn()
    start = context.Barrier(processes)
    pool = [
        context.Process(target=_counting_process, args=(url, str(counter), rounds, locked, start))
        for _ in range(processes)
    ]
    for process in pool:
        process.start()
    for process in pool:
        process.join(timeout=120)
        assert process.exitcode == 0
    return int(counter.read_text())


def test_cross_process_exclusion(shared_url: str, tmp_path: Path) -> None:
    assert _run_counting(shared_url, tmp_path / "counter", locked=True) == 4 * 30


def test_control_cross_process_without_the_lock_updates_are_lost(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'locks'}"
    assert _run_counting(url, tmp_path / "counter", locked=False) < 4 * 30


def _holding_process(url: str, held: Any, release: Any) -> None:
    core = Core(backend=url, key="header:X-S")
    admission = _admission(core)
    core.enter(admission)
    held.set()
    release.wait(60)
    core.leave(admission)


@pytest.fixture
def held_elsewhere(shared_url: str) -> Iterator[Callable[[], None]]:
    """Another process holds session-1 (hashed with the backend's own shared secret)."""
    context = _spawn()
    held, release = context.Event(), context.Event()
    process = context.Process(target=_holding_process, args=(shared_url, held, release))
    process.start()
    assert held.wait(60)
    yield release.set
    release.set()
    process.join(timeout=60)
    assert process.exitcode == 0


def test_cross_process_waiter_runs_after_release(
    make_backend: MakeBackend, held_elsewhere: Callable[[], None]
) -> None:
    core = Core(backend=make_backend(), key="header:X-S", timeout=60.0)
    admission = _admission(core)
    assert core.backend.try_acquire(admission.key) is None  # the secret is shared: same lock
    entered = threading.Event()

    def wait() -> None:
        core.enter(admission)
        entered.set()

    thread = threading.Thread(target=wait)
    thread.start()
    held_elsewhere()
    thread.join(timeout=60)
    assert entered.is_set()
    core.leave(admission)


def test_cross_process_timeout_then_no_lock_is_leaked(
    make_backend: MakeBackend, held_elsewhere: Callable[[], None]
) -> None:
    core = Core(backend=make_backend(), key="header:X-S", timeout=0.05)
    with pytest.raises(LockTimeout):
        core.enter(_admission(core))

    async def cancelled() -> None:
        task = asyncio.ensure_future(core.enter_async(_admission(core), asyncio.Event().wait))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    held_elsewhere()
    # Whatever the timed-out and cancelled waiters left in flight gives the lock back.
    patient = Core(backend=make_backend(), key="header:X-S", timeout=60.0)
    admission = _admission(patient)
    patient.enter(admission)
    patient.leave(admission)
    again = Core(backend=core.backend, key="header:X-S", timeout=60.0)
    admission = _admission(again)
    again.enter(admission)
    again.leave(admission)


def test_cross_process_async_waiter_does_not_block_the_loop(
    make_backend: MakeBackend, held_elsewhere: Callable[[], None]
) -> None:
    core = Core(backend=make_backend(), key="header:X-S", timeout=60.0)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        admission = _admission(core)
        waiting = asyncio.ensure_future(core.enter_async(admission, asyncio.Event().wait))
        while ticks < 20:  # the loop keeps running while the request waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not waiting.done()
        await asyncio.get_running_loop().run_in_executor(None, held_elsewhere)
        await waiting
        await core.leave_async(admission)

    asyncio.run(main())
    assert ticks == 20


# -- shared leases (readers) --------------------------------------------------------------
#
# Readers of a key hold it together; a writer excludes them and they exclude it; the order
# is first come first served between them, across instances (processes) too. Two instances
# of a shared backend in this process stand for two processes: each has its own descriptors
# (file://) or connections (redis://), as another process would.


@pytest.fixture(params=["one instance", "two instances"])
def pair(request: pytest.FixtureRequest, kind: Kind, make_backend: MakeBackend) -> Any:
    """Two views of one backend whose lease excludes: the same instance twice, or two
    instances (two processes); skips the others."""
    if not kind.excludes:
        pytest.skip("the lease of this backend excludes nothing: Core's queue serializes")
    first = make_backend()
    if request.param == "one instance":
        return first, first
    if kind.url is None:
        pytest.skip("the lease of this backend is per process")
    return first, make_backend()


def _until(condition: Callable[[], bool], what: str) -> None:
    """Polls a condition of another thread's wait (no event to wait on: it waits inside the
    backend, in the kernel or in Redis); 30 s to get there, never a timing assert."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"not reached in time: {what}"
        time.sleep(0.002)


class _Stage:
    """Who holds KEY right now, as each holder says when it gets in and before it lets go.

    Every entry is checked against those inside (a writer alone, readers with readers only);
    a clash or a failed wait is recorded, and the test asserts there was none. Waiting
    requests run on daemon threads holding until let go; :meth:`close` (the fixture's
    teardown) lets every one go and gives back every lease, whatever the test did.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.inside: dict[str, bool] = {}  # name -> shared
        self.order: list[str] = []  # names in the order they got in
        self.problems: list[str] = []
        self._held: dict[str, tuple[Backend, Any]] = {}  # held from the test's own thread
        self._go: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def _entered(self, name: str, shared: bool) -> None:
        with self.changed:
            writers = [other for other, reader in self.inside.items() if not reader]
            if writers or (not shared and self.inside):
                self.problems.append(f"{name} got in while {sorted(self.inside)} held")
            self.inside[name] = shared
            self.order.append(name)
            self.changed.notify_all()

    def _leaving(self, name: str) -> None:
        with self.changed:
            del self.inside[name]

    def hold(self, name: str, backend: Backend, *, shared: bool) -> None:
        """Take the key now, from the test's thread (it must be free for this mode)."""
        lease = backend.try_acquire(KEY, shared=shared)
        assert lease is not None, f"{name} could not take the key"
        assert lease.shared is shared
        self._held[name] = (backend, lease)
        self._entered(name, shared)

    def let_go(self, name: str) -> None:
        """Release ``name``'s lease: one held by :meth:`hold`, or a request's (its thread)."""
        if name in self._go:
            self._go[name].set()
            return
        backend, lease = self._held.pop(name)
        self._leaving(name)
        backend.release(lease)

    def request(self, name: str, backend: Backend, *, shared: bool) -> None:
        """A request on a daemon thread: waits for the key, holds it until let go."""
        go = self._go[name] = threading.Event()

        def run() -> None:
            try:
                lease = backend.acquire(KEY, 60.0, shared=shared)
            except BaseException as error:
                with self.changed:
                    self.problems.append(f"{name}: {error!r}")
                    self.changed.notify_all()
                raise
            if lease is None:
                with self.changed:
                    self.problems.append(f"{name} waited 60 s")
                    self.changed.notify_all()
                return
            try:
                if lease.shared is not shared:
                    self.problems.append(f"{name} got a lease with shared={lease.shared}")
                self._entered(name, shared)
                go.wait(60)
                self._leaving(name)
            finally:
                backend.release(lease)

        thread = threading.Thread(target=run, name=f"request {name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def until_in(self, *names: str) -> None:
        """Until each of ``names`` got in (or something went wrong)."""
        with self.changed:
            assert self.changed.wait_for(
                lambda: set(names) <= set(self.order) or self.problems, 30
            ), f"{names} never got in; in: {self.order}"
        assert self.problems == []

    def close(self) -> None:
        for go in self._go.values():
            go.set()
        for name in list(self._held):
            with contextlib.suppress(Exception):
                self.let_go(name)
        for thread in self._threads:
            thread.join(30)


@pytest.fixture
def stage() -> Iterator[_Stage]:
    made = _Stage()
    yield made
    made.close()


def test_shared_leases_of_a_key_are_held_at_once(make_backend: MakeBackend) -> None:
    backend = make_backend()
    first = backend.try_acquire(KEY, shared=True)
    second = backend.try_acquire(KEY, shared=True)
    third = backend.acquire(KEY, 30.0, shared=True)  # a reader waits for no reader
    try:
        assert first is not None
        assert second is not None
        assert third is not None
        assert all(lease.shared for lease in (first, second, third))
    finally:
        for lease in (first, second, third):
            if lease is not None:
                backend.release(lease)
    writer = backend.try_acquire(KEY)  # all three gone: free for a writer
    assert writer is not None
    assert not writer.shared
    backend.release(writer)


def test_shared_leases_of_two_instances_are_held_at_once(
    shared_url: str, make_backend: MakeBackend
) -> None:
    first, second = make_backend(), make_backend()
    one = first.try_acquire(KEY, shared=True)
    two = second.try_acquire(KEY, shared=True)
    try:
        assert one is not None
        assert two is not None
    finally:
        for backend, lease in ((first, one), (second, two)):
            if lease is not None:
                backend.release(lease)


def test_a_writer_excludes_readers_and_readers_exclude_a_writer(pair: Any) -> None:
    first, second = pair
    writer = first.try_acquire(KEY)
    assert writer is not None
    try:
        assert second.try_acquire(KEY, shared=True) is None
        assert second.acquire(KEY, 0.05, shared=True) is None  # waits, gives up, leaves
    finally:
        first.release(writer)
    # A wait that gave up may still be on its way out of the line: wait, do not try.
    reader = second.acquire(KEY, 30.0, shared=True)
    assert reader is not None
    try:
        assert first.try_acquire(KEY) is None
        assert first.acquire(KEY, 0.05) is None
    finally:
        second.release(reader)
    again = first.acquire(KEY, 30.0)  # free again: nothing was left held by the waits
    assert again is not None
    first.release(again)


def _line(kind: Kind, tmp_path: Path) -> Callable[[int, Backend], bool]:
    """``queued(n, seen_from)``: whether n waits for KEY, started from now, are in line
    ahead of any newcomer to ``seen_from``: those in the line every instance shares, plus
    those of ``seen_from`` queued in it behind its own first (never another instance's
    waits that are not in the shared line yet: a newcomer to ``seen_from`` may pass them)."""
    if kind.in_line is None or kind.waiting is None:
        pytest.skip("no probe of this backend's line")
    in_line, waiting = kind.in_line, kind.waiting
    base = in_line(tmp_path, KEY)
    return lambda n, seen_from: (
        in_line(tmp_path, KEY) - base + max(waiting(seen_from, KEY) - 1, 0) >= n
    )


def test_a_reader_never_overtakes_a_writer_queued_before_it(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    """R1 holds, W waits, R2 arrives: R2 waits behind W (joining R1 would overtake it)."""
    first, second = pair
    stage.hold("R1", first, shared=True)
    queued = _line(kind, tmp_path)
    stage.request("W", second, shared=False)
    _until(lambda: queued(1, first), "W is in line")
    assert first.try_acquire(KEY, shared=True) is None  # only readers hold, yet W waits
    stage.request("R2", first, shared=True)
    _until(lambda: queued(2, first), "R2 is in line behind W")
    stage.let_go("R1")
    stage.until_in("W")
    assert stage.order == ["R1", "W"]
    stage.let_go("W")
    stage.until_in("R2")
    assert stage.order == ["R1", "W", "R2"]
    assert stage.problems == []


def test_a_writer_never_overtakes_a_reader_queued_before_it(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    first, second = pair
    stage.hold("W1", first, shared=False)
    queued = _line(kind, tmp_path)
    stage.request("R", second, shared=True)
    _until(lambda: queued(1, second), "R is in line")
    stage.request("W2", second, shared=False)
    _until(lambda: queued(2, second), "W2 is in line behind R")
    stage.let_go("W1")
    stage.until_in("R")
    stage.let_go("R")
    stage.until_in("W2")
    assert stage.order == ["W1", "R", "W2"]
    assert stage.problems == []


def test_a_writer_in_line_between_readers_splits_them(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    """H holds; R1, W, R2 wait in that order: R1 goes in alone, then W, then R2 (R2 does not
    join R1: W waits before it). file://, one instance: W is first in the process's line
    after R1 is served, with a reader behind it."""
    first, second = pair
    stage.hold("H", first, shared=False)
    queued = _line(kind, tmp_path)
    stage.request("R1", first, shared=True)
    _until(lambda: queued(1, first), "R1 is in line")
    stage.request("W", second, shared=False)
    _until(lambda: queued(2, second), "W is in line")
    stage.request("R2", second, shared=True)
    _until(lambda: queued(3, second), "R2 is in line")
    stage.let_go("H")
    stage.until_in("R1")
    stage.let_go("R1")
    stage.until_in("W")
    stage.let_go("W")
    stage.until_in("R2")
    assert stage.order == ["H", "R1", "W", "R2"]
    assert stage.problems == []


def test_readers_queued_behind_a_writer_go_in_together(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    first, second = pair
    stage.hold("W", first, shared=False)
    queued = _line(kind, tmp_path)
    stage.request("R1", first, shared=True)
    _until(lambda: queued(1, first), "R1 is in line")
    stage.request("R2", second, shared=True)
    _until(lambda: queued(2, second), "R2 is in line")
    stage.request("W2", first, shared=False)
    _until(lambda: queued(3, first), "W2 is in line behind both")
    stage.let_go("W")
    stage.until_in("R1", "R2")  # neither was let go: both hold at once
    assert set(stage.inside) == {"R1", "R2"}
    assert "W2" not in stage.order
    stage.let_go("R1")
    stage.let_go("R2")
    stage.until_in("W2")
    assert stage.problems == []


def test_a_writer_behind_two_readers_gets_in_once_both_left(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    first, second = pair
    stage.hold("R1", first, shared=True)
    stage.hold("R2", second, shared=True)
    queued = _line(kind, tmp_path)
    stage.request("W", first, shared=False)
    _until(lambda: queued(1, second), "W is in line")
    stage.let_go("R1")
    assert second.try_acquire(KEY, shared=True) is None  # R2 holds, but W waits first
    stage.let_go("R2")
    stage.until_in("W")
    assert stage.order == ["R1", "R2", "W"]
    assert stage.problems == []  # W got in with nobody inside


def test_a_waiter_that_gives_up_leaves_its_mode_behind(
    kind: Kind, pair: Any, stage: _Stage, tmp_path: Path
) -> None:
    """A reader in line gives up; the writer behind it is served as a writer, alone
    (file://: the process's one kernel wait was the reader's)."""
    first, second = pair
    stage.hold("W1", first, shared=False)
    queued = _line(kind, tmp_path)

    async def give_up_in_line() -> None:
        reader = second.acquire_future(KEY, None, shared=True)
        _until(lambda: queued(1, second), "the reader is in line")
        stage.request("W2", second, shared=False)
        _until(lambda: queued(2, second), "W2 is in line behind the reader")
        second.give_up(reader)
        await asyncio.sleep(0)  # the future's callbacks: out of line

    asyncio.run(give_up_in_line())
    stage.let_go("W1")
    stage.until_in("W2")
    assert stage.inside == {"W2": False}
    assert first.try_acquire(KEY, shared=True) is None
    stage.let_go("W2")
    again = first.acquire(KEY, 30.0, shared=True)
    assert again is not None
    first.release(again)
    assert stage.problems == []


def test_shared_leases_async(kind: Kind, make_backend: MakeBackend) -> None:
    backend = make_backend()

    async def main() -> None:
        leases = await asyncio.gather(
            backend.acquire_async(KEY, 30.0, shared=True),
            backend.acquire_async(KEY, 30.0, shared=True),
        )
        try:
            assert all(lease is not None and lease.shared for lease in leases)
            if kind.excludes:
                assert await backend.acquire_async(KEY, 0.05) is None
        finally:
            for lease in leases:
                if lease is not None:
                    await backend.release_async(lease)
        writer = await backend.acquire_async(KEY, 30.0)
        assert writer is not None
        try:
            assert not writer.shared
            if kind.excludes:
                assert await backend.acquire_async(KEY, 0.05, shared=True) is None
        finally:
            await backend.release_async(writer)
        reader = await backend.acquire_async(KEY, 30.0, shared=True)
        assert reader is not None
        await backend.release_async(reader)

    asyncio.run(main())


def test_a_shared_lease_may_load_but_never_store_or_mark(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.set(KEY, "first", None)  # a key's first record, set before any lease
    reader = backend.try_acquire(KEY, shared=True)
    assert reader is not None
    try:
        assert backend.load(reader) == "first"
        with pytest.raises(ValueError, match="shared"):
            backend.store(reader, "written by a reader", None)
        with pytest.raises(ValueError, match="shared"):
            backend.store(reader, None, None)
        with pytest.raises(ValueError, match="shared"):
            backend.mark(reader)
        assert backend.load(reader) == "first"  # nothing was written
    finally:
        backend.release(reader)
    writer = backend.try_acquire(KEY)
    assert writer is not None
    try:
        assert backend.load(writer) == "first"
        backend.store(writer, "second", None)
    finally:
        backend.release(writer)
    reader = backend.try_acquire(KEY, shared=True)
    assert reader is not None
    try:
        assert backend.load(reader) == "second"
    finally:
        backend.release(reader)


def test_readers_of_two_instances_load_what_a_writer_stored(
    shared_url: str, make_backend: MakeBackend
) -> None:
    writer_side, reader_side = make_backend(), make_backend()
    writer = writer_side.try_acquire(KEY)
    assert writer is not None
    try:
        writer_side.store(writer, "stored by a writer", None)
    finally:
        writer_side.release(writer)
    readers = [(side, side.try_acquire(KEY, shared=True)) for side in (writer_side, reader_side)]
    try:
        for side, lease in readers:
            assert lease is not None
            assert side.load(lease) == "stored by a writer"
    finally:
        for side, lease in readers:
            if lease is not None:
                side.release(lease)


def _reading_process(url: str, held: Any, release: Any) -> None:
    backend = from_url(url)
    lease = backend.acquire(KEY, 60.0, shared=True)
    assert lease is not None
    held.set()
    release.wait(60)
    backend.release(lease)


def test_cross_process_readers_hold_together_and_exclude_a_writer(
    shared_url: str, make_backend: MakeBackend
) -> None:
    context = _spawn()
    held, release = context.Event(), context.Event()
    process = context.Process(target=_reading_process, args=(shared_url, held, release))
    process.start()
    try:
        assert held.wait(60)
        backend = make_backend()
        reader = backend.try_acquire(KEY, shared=True)  # with the other process's reader
        assert reader is not None
        try:
            assert backend.try_acquire(KEY) is None
        finally:
            backend.release(reader)
        assert backend.try_acquire(KEY) is None  # the other process still reads
        release.set()
        writer = backend.acquire(KEY, 60.0)  # its release lets the writer in
        assert writer is not None
        backend.release(writer)
    finally:
        release.set()
        process.join(timeout=60)
    assert process.exitcode == 0


# -- one backend per URL per process -----------------------------------------------------


# The spellings of one backend, for each scheme ({d}: a directory under the test's tmp dir).
SPELLINGS = [
    pytest.param(["memory://", "memory:///"], id="memory"),
    pytest.param(
        ["file://{d}", "file://{d}/", "file://localhost{d}", "file://{d}/./", "file://{d}//"],
        id="file",
    ),
]


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("spellings", SPELLINGS)
def test_from_url_gives_one_backend_per_url(spellings: list[str], tmp_path: Path) -> None:
    urls = [url.format(d=tmp_path / "locks") for url in spellings]
    backends = [from_url(url) for url in urls]
    assert all(backend is backends[0] for backend in backends)


@pytest.mark.usefixtures("registry")
def test_different_directories_get_different_backends(tmp_path: Path) -> None:
    first, second = from_url(f"file://{tmp_path / 'a'}"), from_url(f"file://{tmp_path / 'b'}")
    assert first is not second
    assert from_url(f"file://{tmp_path / 'a'}") is first


@pytest.mark.usefixtures("registry")
def test_concurrent_first_calls_make_one_backend(tmp_path: Path) -> None:
    """Threads asking for a new URL at once all get the one backend made for it."""
    url = f"file://{tmp_path / 'locks'}"
    start = threading.Barrier(8)
    got: list[Backend] = []

    def ask() -> None:
        start.wait()
        got.append(from_url(url))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8
    assert len({id(backend) for backend in got}) == 1


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("spellings", SPELLINGS)
def test_middlewares_on_one_url_share_its_backend(spellings: list[str], tmp_path: Path) -> None:
    url = spellings[0].format(d=tmp_path / "locks")
    wsgi = SessionLockMiddleware(lambda environ, start_response: [], backend=url)
    asgi = ASGISessionLockMiddleware(_asgi_app, backend=url)
    core = Core(backend=url)
    assert wsgi.core.backend is asgi.core.backend is core.backend is from_url(url)


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("spellings", SPELLINGS)
def test_close_takes_a_backend_out_and_from_url_makes_a_fresh_working_one(
    spellings: list[str], tmp_path: Path
) -> None:
    url = spellings[0].format(d=tmp_path / "locks")
    old = from_url(url)
    old.close()
    new = from_url(url)
    assert new is not old
    assert from_url(url) is new
    core = _core(new, key="header:X-S", timeout=5.0)
    admission = _admission(core)
    core.enter(admission)
    core.leave(admission)
    new.set("note-1", "after close", None)
    assert new.get("note-1") == "after close"


@pytest.mark.usefixtures("registry")
def test_close_all_closes_every_registered_backend(tmp_path: Path) -> None:
    made = [from_url("memory://"), from_url(f"file://{tmp_path / 'a'}")]
    assert close_all() == 2
    assert _shared.registered() == {}
    again = [from_url("memory://"), from_url(f"file://{tmp_path / 'a'}")]
    assert all(new is not old for new, old in zip(again, made))


@pytest.mark.usefixtures("registry")
def test_a_backend_object_passed_directly_is_never_registered(backend: Backend) -> None:
    before = _shared.registered()
    core = _core(backend)
    assert _shared.registered() == before
    assert all(known is not core.backend for known in _shared.registered().values())
