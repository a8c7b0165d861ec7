"""The file backend's lock across processes: no overtaking, first come first served, no
deadlock when a waiter or the holder dies (``sessionlock.backends._ticketlock``)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionlock.backends import _ticketlock

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
