"""The file backend's lock across processes: no overtaking, first come first served, no
deadlock when a waiter or the holder dies (``sessionlock.backends._ticketlock``)."""

from __future__ import annotations

import fcntl
import itertools
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionlock.backends import _ticketlock
from sessionlock.backends.file import FileBackend

pytestmark = pytest.mark.skipif(
    not (_ticketlock.FAIR and os.path.exists("/proc/locks")), reason="needs Linux OFD locks"
)

# A waiter process: queue for the lock, say so, then give it back when told.
WAITER = """
import os, sys
from sessionlock.backends import _ticketlock
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
_ticketlock.take_in_turn(fd)
print("got", sys.argv[2], flush=True)
sys.stdin.readline()
_ticketlock.give(fd)
"""
# The control: the same waiter on a plain flock.
FLOCK_WAITER = WAITER.replace(
    "_ticketlock.take_in_turn(fd)", "import fcntl; fcntl.flock(fd, fcntl.LOCK_EX)"
)


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "k.lock"


@pytest.fixture
def spawn(lock_file: Path) -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(name: str, code: str = WAITER) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(lock_file), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _blocked(lock_file: Path) -> int:
    """How many lock requests wait on the file right now (``->`` lines of /proc/locks).

    Each counted once: the kernel hands /proc/locks out a page (4 KB) per read, resuming by
    position, so while other processes take and drop locks a line can come twice. Counted
    twice, a waiter not yet in line would pass for queued (the test then lets the next one
    start, which may queue first). The waits of one file counted here differ in kind or
    range (one ticket each), so only a repeat has the same text after the line number.
    """
    inode = os.stat(lock_file).st_ino
    with open("/proc/locks") as table:
        waiting = {
            line.partition(":")[2].strip()
            for line in table
            if "->" in line and re.search(rf"->.*:{inode}\s", line)
        }
    return len(waiting)


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)  # watching another process's kernel state: no event to wait on


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP is delivered asynchronously)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] in ("T", "t")


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    _until(lambda: _stopped(pid))


def _hold(lock_file: Path) -> int:
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    assert _ticketlock.try_take(fd)
    return fd


def _got(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def _let_go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()


def test_a_newcomer_never_overtakes_a_queued_waiter(
    lock_file: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    holder = _hold(lock_file)
    waiter = spawn("w")
    _until(lambda: _blocked(lock_file) == 1)
    _stop(waiter.pid)  # it cannot even run when the lock comes free
    _ticketlock.give(holder)
    newcomer = os.open(lock_file, os.O_RDWR | os.O_APPEND)
    try:
        assert not _ticketlock.try_take(newcomer)  # the stopped waiter is first
        os.kill(waiter.pid, signal.SIGCONT)
        assert _got(waiter) == "got w"
        _let_go(waiter)
        waiter.wait(timeout=30)
        assert _ticketlock.try_take(newcomer)  # now nobody is queued
        _ticketlock.give(newcomer)
    finally:
        os.close(newcomer)
        os.close(holder)


def test_control_a_plain_flock_lets_the_newcomer_overtake(
    lock_file: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    holder = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiter = spawn("w", FLOCK_WAITER)
    _until(lambda: _blocked(lock_file) == 1)
    _stop(waiter.pid)
    fcntl.flock(holder, fcntl.LOCK_UN)
    newcomer = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(newcomer, fcntl.LOCK_EX | fcntl.LOCK_NB)  # overtakes: no error
        fcntl.flock(newcomer, fcntl.LOCK_UN)
    finally:
        os.kill(waiter.pid, signal.SIGCONT)
        os.close(newcomer)
        os.close(holder)


def test_waiters_are_served_in_the_order_they_queued(
    lock_file: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    holder = _hold(lock_file)
    waiters = []
    for number in range(4):
        waiters.append(spawn(str(number)))
        _until(lambda: _blocked(lock_file) == number + 1)  # queued before the next comes
    _ticketlock.give(holder)
    os.close(holder)
    served = []
    for waiter in waiters:
        served.append(_got(waiter))
        _let_go(waiter)
    assert served == [f"got {number}" for number in range(4)]


def test_a_waiter_killed_in_line_or_holding_stops_nobody(
    lock_file: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    holder = _hold(lock_file)
    first, middle, last = spawn("1"), None, None
    _until(lambda: _blocked(lock_file) == 1)
    middle = spawn("2")
    _until(lambda: _blocked(lock_file) == 2)
    last = spawn("3")
    _until(lambda: _blocked(lock_file) == 3)
    middle.kill()  # dies in line: its ticket goes with it
    middle.wait(timeout=30)
    _ticketlock.give(holder)
    os.close(holder)
    assert _got(first) == "got 1"
    first.kill()  # dies holding: the kernel frees the lock
    assert _got(last) == "got 3"
    _let_go(last)
    assert last.wait(timeout=30) == 0


def test_an_idle_holder_empties_a_long_ticket_file(lock_file: Path) -> None:
    holder = _hold(lock_file)
    os.write(holder, b"\n" * 70_000)  # as if 70 000 waits had queued here
    _ticketlock.give(holder)
    assert _ticketlock.try_take(holder)
    assert os.fstat(holder).st_size > _ticketlock.RESET_SIZE
    _ticketlock.reset_if_long(holder)
    assert os.fstat(holder).st_size == 0
    _ticketlock.give(holder)
    os.close(holder)


# -- readers (shared holders) -------------------------------------------------------------
#
# A reader read-locks byte 0: readers hold together, a writer excludes them all. Readers and
# writers wait in the one ticket line, so neither overtakes the other across processes.

READER = WAITER.replace("_ticketlock.take_in_turn(fd)", "_ticketlock.take_in_turn(fd, shared=True)")


def _descriptor(lock_file: Path) -> int:
    """A descriptor of its own: another open file description, as another process has."""
    return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)


def _line_within(process: subprocess.Popen[str], seconds: float = 30) -> str:
    """The process's next line; fails (never hangs) if none comes within ``seconds``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, "no line in time: the process never got the lock"
    return process.stdout.readline().strip()


def _said_nothing(process: subprocess.Popen[str]) -> bool:
    assert process.stdout is not None
    return not select.select([process.stdout], [], [], 0)[0]


@pytest.fixture
def descriptors(lock_file: Path) -> Iterator[Callable[[], int]]:
    """Descriptors of the lock file, closed after the test (which frees what they hold)."""
    opened: list[int] = []

    def open_one() -> int:
        opened.append(_descriptor(lock_file))
        return opened[-1]

    yield open_one
    for fd in opened:
        os.close(fd)


def test_readers_hold_together_and_exclude_a_writer(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    first, second, writer = descriptors(), descriptors(), descriptors()
    assert _ticketlock.try_take(first, shared=True)
    assert _ticketlock.try_take(second, shared=True)  # another description: both hold
    reader = spawn("r", READER)  # another process, through the line: no reader stops it
    assert _line_within(reader) == "got r"
    assert not _ticketlock.try_take(writer)
    _let_go(reader)
    assert reader.wait(timeout=30) == 0
    _ticketlock.give(first)
    assert not _ticketlock.try_take(writer)  # one reader is enough to exclude it
    _ticketlock.give(second)
    assert _ticketlock.try_take(writer)
    assert not _ticketlock.try_take(first, shared=True)  # a writer excludes readers
    _ticketlock.give(writer)
    assert _ticketlock.try_take(first, shared=True)  # the failed tries left nothing held
    _ticketlock.give(first)


def test_a_reader_never_overtakes_a_writer_queued_before_it(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    """R1 holds, W queues, R2 comes: R2 waits behind W though only a reader holds."""
    r1, newcomer = descriptors(), descriptors()
    assert _ticketlock.try_take(r1, shared=True)
    writer = spawn("w")
    _until(lambda: _blocked(lock_file) == 1)
    assert not _ticketlock.try_take(newcomer, shared=True)  # the fast path sees the line
    r2 = spawn("r2", READER)
    _until(lambda: _blocked(lock_file) == 2)
    _ticketlock.give(r1)
    assert _line_within(writer) == "got w"  # had R2 gone first, W would wait for it
    assert _said_nothing(r2)
    _let_go(writer)
    assert _line_within(r2) == "got r2"
    _let_go(r2)
    assert r2.wait(timeout=30) == 0
    assert _ticketlock.try_take(newcomer, shared=True)  # nobody in line any more
    _ticketlock.give(newcomer)


def test_control_without_the_line_a_reader_overtakes_the_waiting_writer(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    """What the fast path's check of byte 1 prevents: a bare read lock joins the reader."""
    r1, newcomer = descriptors(), descriptors()
    assert _ticketlock.try_take(r1, shared=True)
    writer = spawn("w")
    _until(lambda: _blocked(lock_file) == 1)
    fcntl.fcntl(newcomer, fcntl.F_OFD_SETLK, _ticketlock._SHARE)  # no error: overtakes W
    _ticketlock.give(r1)
    assert _said_nothing(writer)  # W still waits, for the reader that came after it
    _ticketlock.give(newcomer)
    assert _line_within(writer) == "got w"
    _let_go(writer)


def test_readers_queued_behind_a_writer_go_in_together(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    holder = descriptors()
    assert _ticketlock.try_take(holder)
    r1 = spawn("r1", READER)
    _until(lambda: _blocked(lock_file) == 1)
    r2 = spawn("r2", READER)
    _until(lambda: _blocked(lock_file) == 2)
    w2 = spawn("w2")
    _until(lambda: _blocked(lock_file) == 3)
    _ticketlock.give(holder)
    assert _line_within(r1) == "got r1"
    assert _line_within(r2) == "got r2"  # neither let go: both hold at once
    assert _said_nothing(w2)
    _let_go(r1)
    assert _said_nothing(w2)  # r2 still holds
    _let_go(r2)
    assert _line_within(w2) == "got w2"
    _let_go(w2)
    assert w2.wait(timeout=30) == 0


def test_a_writer_queued_behind_readers_waits_for_every_one(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    r1, r2, newcomer = descriptors(), descriptors(), descriptors()
    assert _ticketlock.try_take(r1, shared=True)
    assert _ticketlock.try_take(r2, shared=True)
    writer = spawn("w")
    _until(lambda: _blocked(lock_file) == 1)
    _ticketlock.give(r1)
    assert not _ticketlock.try_take(newcomer, shared=True)  # R2 holds, W is next
    assert _said_nothing(writer)
    _ticketlock.give(r2)
    assert _line_within(writer) == "got w"
    _let_go(writer)
    assert writer.wait(timeout=30) == 0


def test_a_reader_killed_holding_or_in_line_stops_nobody(
    lock_file: Path,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    holding = spawn("r1", READER)
    assert _line_within(holding) == "got r1"
    writer = spawn("w")
    _until(lambda: _blocked(lock_file) == 1)
    in_line = spawn("r2", READER)
    _until(lambda: _blocked(lock_file) == 2)
    in_line.kill()  # dies in line behind W: nothing changes for W
    in_line.wait(timeout=30)
    assert _said_nothing(writer)
    holding.kill()  # dies holding (SIGKILL): the kernel drops its read lock
    holding.wait(timeout=30)
    assert _line_within(writer) == "got w"
    _let_go(writer)
    assert writer.wait(timeout=30) == 0
    after = descriptors()
    assert _ticketlock.try_take(after, shared=True)  # nobody holds, nobody in line
    _ticketlock.give(after)


# -- fast paths at the same instant ---------------------------------------------------------
#
# A race made exact: each try runs on a thread of its own, and every call it makes to the
# kernel through _ticketlock (a probe, a lock, an unlock) waits for its turn in a schedule.
# Every interleaving of two tries is run, in place of hoping that two processes collide.


class _Lane:
    """One thread's try: let through one kernel call at a time."""

    STEP, END = "step", "end"

    def __init__(self, job: Callable[[], object]) -> None:
        self.job = job
        self.gate = threading.Semaphore(0)
        self.events: queue.Queue[str] = queue.Queue()
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None


class _Interleaving:
    """Runs jobs on threads of their own, their ``_ticketlock`` fcntl calls one at a time in
    the order a schedule names them (a turn that comes after a job's last call ends it).
    Only tries: a call that waits for a lock would stop the schedule."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lanes: dict[int, _Lane] = {}
        real = fcntl.fcntl

        def call(fd: int, cmd: int, arg: bytes | int = 0) -> bytes | int:
            lane = self._lanes.get(threading.get_ident())
            if lane is None:  # another thread (the test's): not stepped
                return real(fd, cmd, arg)
            lane.gate.acquire()
            try:
                return real(fd, cmd, arg)
            finally:
                lane.events.put(_Lane.STEP)

        names = {name: getattr(fcntl, name) for name in dir(fcntl) if not name.startswith("_")}
        monkeypatch.setattr(_ticketlock, "fcntl", types.SimpleNamespace(**{**names, "fcntl": call}))

    def start(self, lane: _Lane) -> threading.Thread:
        """The lane's thread, started: it waits for its first turn (released in finally)."""
        thread = threading.Thread(target=self._body, args=(lane,), daemon=True)
        thread.start()
        return thread

    def _body(self, lane: _Lane) -> None:
        self._lanes[threading.get_ident()] = lane
        try:
            lane.result = lane.job()
        except BaseException as error:
            lane.error = error
        finally:
            del self._lanes[threading.get_ident()]
            lane.events.put(_Lane.END)

    def run(self, schedule: str, jobs: dict[str, Callable[[], object]]) -> dict[str, object]:
        lanes = {name: _Lane(job) for name, job in jobs.items()}
        threads = []
        try:
            for lane in lanes.values():
                threads.append(self.start(lane))
            for name in schedule:
                self.step(lanes[name])
            for lane in lanes.values():  # whatever the schedule left: to the end, in order
                self.finish(lane)
        finally:
            for lane in lanes.values():
                lane.gate.release(1000)  # nothing waits for its turn any more
            for thread in threads:
                thread.join(timeout=30)
        for lane in lanes.values():
            if lane.error is not None:
                raise lane.error
        return {name: lane.result for name, lane in lanes.items()}

    @staticmethod
    def step(lane: _Lane) -> None:
        """Let the lane's next call through and wait until it is made (or the job ends)."""
        if lane.done:
            return
        lane.gate.release()
        # A failsafe, not a clock: a step is one non-blocking call.
        if lane.events.get(timeout=30) == _Lane.END:
            lane.done = True

    def finish(self, lane: _Lane) -> None:
        for _ in range(16):
            self.step(lane)
        assert lane.done, "a try that never ends"


#: Every order of two tries' calls (up to three each: probe or lock, lock, unlock).
SCHEDULES = sorted({"".join(order) for order in itertools.permutations("AAABBB")})


def _fast_path_before(fd: int) -> bool:
    """The control: the reader's fast path as it was, a write lock on byte 1 for a moment."""
    lock = _ticketlock.fcntl.fcntl
    try:
        lock(fd, _ticketlock._SET, _ticketlock._CLOSE_LINE)
    except (BlockingIOError, PermissionError):
        return False
    try:
        lock(fd, _ticketlock._SET, _ticketlock._SHARE)
    except (BlockingIOError, PermissionError):
        return False
    finally:
        lock(fd, _ticketlock._SET, _ticketlock._DROP_MARK)
    return True


def _two_readers_at_once(
    lock_file: Path, monkeypatch: pytest.MonkeyPatch, fast_path: Callable[[int], bool]
) -> dict[str, tuple[dict[str, object], int]]:
    """Per schedule: which reader's fast path held, and the ticket bytes their acquires
    appended (a reader whose try failed queues, as the backend's contender does)."""
    stepped = _Interleaving(monkeypatch)
    outcomes = {}
    for schedule in SCHEDULES:
        a, b = _descriptor(lock_file), _descriptor(lock_file)
        try:
            held = stepped.run(schedule, {"A": lambda: fast_path(a), "B": lambda: fast_path(b)})
            for name, fd in (("A", a), ("B", b)):
                if not held[name]:
                    _ticketlock.take_in_turn(fd, shared=True)  # the other only reads: at once
            outcomes[schedule] = (held, os.fstat(a).st_size)
        finally:
            os.close(a)  # drops whatever each held
            os.close(b)
        os.truncate(lock_file, 0)
    return outcomes


def test_readers_trying_at_the_same_instant_both_take_the_fast_path(
    lock_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _two_readers_at_once(lock_file, monkeypatch, _ticketlock._try_share)
    assert len(outcomes) == 20
    for schedule, (held, size) in outcomes.items():
        assert held == {"A": True, "B": True}, schedule  # neither is turned away
        assert size == 0, schedule  # so neither queued: no ticket byte


def test_control_a_write_lock_on_byte_1_makes_simultaneous_readers_collide(
    lock_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _two_readers_at_once(lock_file, monkeypatch, _fast_path_before)
    collided = {schedule for schedule, (held, _) in outcomes.items() if not all(held.values())}
    assert "ABBBAA" in collided  # B tries while A holds byte 1: B queues
    for schedule in collided:
        held, size = outcomes[schedule]
        assert sum(map(bool, held.values())) == 1, schedule
        assert size == 1, schedule  # the loser's ticket byte, which no reader cuts back


def test_a_reader_s_and_a_writer_s_tries_at_once_let_exactly_one_hold(
    lock_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe and the read lock are two steps: whatever a writer's try does between
    them, never both hold (and one always does: nobody else is there)."""
    stepped = _Interleaving(monkeypatch)
    winners = set()
    for schedule in SCHEDULES:
        reader, writer = _descriptor(lock_file), _descriptor(lock_file)
        try:
            held = stepped.run(
                schedule,
                {
                    "A": lambda: _ticketlock.try_take(reader, shared=True),
                    "B": lambda: _ticketlock.try_take(writer),
                },
            )
        finally:
            os.close(reader)
            os.close(writer)
        assert sum(map(bool, held.values())) == 1, (schedule, held)
        winners.update(name for name, got in held.items() if got)
        assert os.path.getsize(lock_file) == 0, schedule
    assert winners == {"A", "B"}  # simultaneous arrivals: either may go first


def test_a_writer_queuing_between_a_reader_s_probe_and_lock_waits_for_that_reader(
    lock_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    spawn: Callable[..., subprocess.Popen[str]],
    descriptors: Callable[[], int],
) -> None:
    """R1 holds; R2 probes (nobody queued); W queues behind R1; R2 read-locks: W, which came
    after R2's probe, waits for R2 too (they arrived together); it overtakes nobody, nor is
    overtaken by anyone who came after it."""
    r1, r2, later = descriptors(), descriptors(), descriptors()
    assert _ticketlock.try_take(r1, shared=True)
    stepped = _Interleaving(monkeypatch)
    lane = _Lane(lambda: _ticketlock.try_take(r2, shared=True))
    thread = stepped.start(lane)
    try:
        stepped.step(lane)  # the probe: nobody queued
        writer = spawn("w")
        _until(lambda: _blocked(lock_file) == 1)  # W in line, waiting for R1
        stepped.finish(lane)  # the read lock: no writer holds
        assert lane.error is None
        assert lane.result is True
    finally:
        lane.gate.release(1000)
        thread.join(timeout=30)
    assert not _ticketlock.try_take(later, shared=True)  # a reader after W waits behind W
    _ticketlock.give(r1)
    assert _said_nothing(writer)  # R2 still holds
    _ticketlock.give(r2)
    assert _line_within(writer) == "got w"
    _let_go(writer)
    assert writer.wait(timeout=30) == 0


def test_the_probe_sees_every_other_description_s_mark_never_its_own(
    descriptors: Callable[[], int],
) -> None:
    """Why a try needs a descriptor of its own that holds nothing (as the backend's have):
    F_OFD_GETLK ignores the locks of the description it is asked through."""
    waiting, newcomer = descriptors(), descriptors()
    fcntl.fcntl(waiting, fcntl.F_OFD_SETLK, _ticketlock._MARK)  # as a waiter in line holds
    assert not _ticketlock.try_take(newcomer, shared=True)  # another description: seen
    assert _ticketlock.try_take(waiting, shared=True)  # its own mark: not seen (the hazard)
    _ticketlock.give(waiting)
    fcntl.fcntl(waiting, fcntl.F_OFD_SETLK, _ticketlock._DROP_MARK)
    assert _ticketlock.try_take(newcomer, shared=True)  # nobody in line any more
    _ticketlock.give(newcomer)


# -- the file backend's readers ------------------------------------------------------------

KEY = "0123456789abcdef0123456789abcdef"


def _started(directory: Path) -> FileBackend:
    made = FileBackend(directory)
    assert made.swept.wait(30)  # the start sweep is over: it locks and removes lock files
    return made


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[FileBackend]:
    made = _started(tmp_path / "locks")
    yield made
    made.close()


def _key_file(backend: FileBackend) -> str:
    return os.path.join(backend.directory, KEY + ".lock")


def test_readers_of_one_process_each_hold_a_descriptor_of_their_own(
    backend: FileBackend, tmp_path: Path
) -> None:
    readers = [backend.try_acquire(KEY, shared=True) for _ in range(3)]
    other = _started(tmp_path / "locks")  # another process's view
    try:
        assert all(lease is not None for lease in readers)
        assert len({lease.token for lease in readers if lease is not None}) == 3
        assert backend.held() == 3
        while len(readers) > 1:
            lease = readers.pop()
            assert lease is not None
            backend.release(lease)
            assert other.try_acquire(KEY) is None  # one reader left still excludes a writer
        lease = readers.pop()
        assert lease is not None
        backend.release(lease)
        writer = other.try_acquire(KEY)
        assert writer is not None
        other.release(writer)
    finally:
        for lease in readers:
            if lease is not None:
                backend.release(lease)
        other.close()


def test_a_reader_never_cuts_the_tickets_back(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = backend.try_acquire(KEY)
    assert writer is not None
    backend.store(writer, "record", None)
    backend.release(writer)
    monkeypatch.setattr(_ticketlock, "RESET_SIZE", 100)
    fd = os.open(_key_file(backend), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"\n" * 200)  # as 200 tickets would
    os.close(fd)
    size = os.path.getsize(_key_file(backend))
    reader = backend.try_acquire(KEY, shared=True)
    assert reader is not None
    try:
        assert os.path.getsize(_key_file(backend)) == size  # a reader writes nothing
        assert backend.load(reader) == "record"
    finally:
        backend.release(reader)
    writer = backend.try_acquire(KEY)  # control: a writer over RESET_SIZE cuts back
    assert writer is not None
    try:
        assert os.path.getsize(_key_file(backend)) < 100
        assert backend.load(writer) == "record"
    finally:
        backend.release(writer)


def test_the_janitor_never_removes_a_file_a_reader_holds(backend: FileBackend) -> None:
    reader = backend.try_acquire(KEY, shared=True)
    assert reader is not None
    try:
        assert not backend._unlink_if_free(KEY + ".lock")
        backend.sweep()
        assert os.path.exists(_key_file(backend))
        assert backend.load(reader) is None
    finally:
        backend.release(reader)
    assert backend._unlink_if_free(KEY + ".lock")  # control: free, it goes
    assert not os.path.exists(_key_file(backend))


def test_a_reader_s_descriptor_goes_back_unlocked(backend: FileBackend, tmp_path: Path) -> None:
    """Kept open for the key's next request, it must hold nothing (another reader's lock on
    it would be no lock: OFD locks of one open file never conflict)."""
    first = backend.try_acquire(KEY, shared=True)
    second = backend.acquire(KEY, 30.0, shared=True)
    assert first is not None
    assert second is not None
    backend.release(first)
    backend.release(second)
    other = _started(tmp_path / "locks")
    try:
        writer = other.try_acquire(KEY)
        assert writer is not None
        assert backend.try_acquire(KEY, shared=True) is None  # the kept descriptor excluded
        other.release(writer)
    finally:
        other.close()


def _backend_readers_at_once(
    backend: FileBackend, other: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[list[bool], int]]:
    """Per schedule: whose try_acquire held (a process each), and the bytes the lock file
    grew by once the other got in through acquire, as Core does after a failed try."""
    first = backend.try_acquire(KEY)  # the lock file is there before the race
    assert first is not None
    backend.release(first)
    stepped = _Interleaving(monkeypatch)
    outcomes = {}
    for schedule in SCHEDULES:
        size = os.path.getsize(_key_file(backend))
        tried = stepped.run(
            schedule,
            {
                "A": lambda: backend.try_acquire(KEY, shared=True),
                "B": lambda: other.try_acquire(KEY, shared=True),
            },
        )
        leases = [
            (made, lease if lease is not None else made.acquire(KEY, 30.0, shared=True))
            for made, lease in ((backend, tried["A"]), (other, tried["B"]))
        ]
        grown = os.path.getsize(_key_file(backend)) - size
        for made, lease in leases:
            assert lease is not None
            made.release(lease)
        outcomes[schedule] = ([lease is not None for lease in tried.values()], grown)
    return outcomes


def test_two_processes_readers_at_once_hold_together_and_grow_no_file(
    backend: FileBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _started(tmp_path / "locks")  # another process's view
    try:
        outcomes = _backend_readers_at_once(backend, other, monkeypatch)
    finally:
        other.close()
    for schedule, (tried, grown) in outcomes.items():
        assert tried == [True, True], schedule
        assert grown == 0, schedule


def test_control_with_the_old_fast_path_the_lock_file_grows(
    backend: FileBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ticketlock, "_try_share", _fast_path_before)
    other = _started(tmp_path / "locks")
    try:
        outcomes = _backend_readers_at_once(backend, other, monkeypatch)
    finally:
        other.close()
    assert outcomes["ABBBAA"] == ([True, False], 1)  # B turned away, queued: a ticket byte
    assert sum(grown for _, grown in outcomes.values()) > 1
