"""The file backend's lock across processes: no overtaking, first come first served, no
deadlock when a waiter or the holder dies (``sessionlock.backends._ticketlock``)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import time
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
    """How many lock requests wait on the file right now (``->`` lines of /proc/locks)."""
    inode = os.stat(lock_file).st_ino
    with open("/proc/locks") as table:
        return sum(bool(re.search(rf"->.*:{inode}\s", line)) for line in table if "->" in line)


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
