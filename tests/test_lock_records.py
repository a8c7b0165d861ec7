"""file://: a session's record lives at the start of its lock file (backends/_lockrecord.py).

Written and read by the lease's holder on the descriptor it holds; moved to the value store
before an idle lock file is removed; never confused with the ticket bytes appended after it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionlock.backends import _ticketlock
from sessionlock.backends.base import Lease
from sessionlock.backends.file import FileBackend

KEY = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory(tmp_path: Path) -> str:
    return str(tmp_path / "locks")


def _started(directory: str, **options: Clock) -> FileBackend:
    """A backend whose start sweep is over: it would otherwise lock (and remove) the test's
    lock files behind its back."""
    made = FileBackend(directory, **options)
    assert made.swept.wait(30)
    return made


@pytest.fixture
def backend(directory: str) -> Iterator[FileBackend]:
    made = _started(directory)
    yield made
    made.close()


def _held(backend: FileBackend, key: str = KEY) -> Lease:
    lease = backend.try_acquire(key)
    assert lease is not None
    return lease


def _load(backend: FileBackend, key: str = KEY) -> str | None:
    lease = _held(backend, key)
    try:
        return backend.load(lease)
    finally:
        backend.release(lease)


def _store(backend: FileBackend, value: str | None, ttl: float | None = None) -> None:
    lease = _held(backend)
    try:
        backend.store(lease, value, ttl)
    finally:
        backend.release(lease)


def _lock_file(directory: str) -> str:
    return os.path.join(directory, KEY + ".lock")


def test_a_record_is_read_back_by_another_process_and_deleted(
    backend: FileBackend, directory: str
) -> None:
    other = _started(directory)  # another process's view of the directory
    try:
        assert _load(other) is None
        _store(backend, "first record, longer than the next")
        assert _load(other) == "first record, longer than the next"
        _store(backend, "second")  # shorter: the older tail is never read
        assert _load(other) == "second"
        _store(backend, None)
        assert _load(other) is None
    finally:
        other.close()


def test_a_store_gives_the_key_a_new_stamp(backend: FileBackend) -> None:
    lease = _held(backend)
    before = lease.stamp
    stamp = backend.store(lease, "value", None)
    backend.release(lease)
    assert stamp is not None
    assert stamp != before
    again = _held(backend)
    assert again.stamp == stamp  # what the next lease sees: nobody wrote since
    backend.release(again)


def test_a_key_s_first_record_set_before_any_lease_is_what_load_finds(
    backend: FileBackend,
) -> None:
    backend.set(KEY, "first", None)
    assert _load(backend) == "first"
    _store(backend, "second")  # from now on the lock file's
    assert _load(backend) == "second"


def test_the_record_of_an_idle_lock_file_is_moved_before_the_file_goes(
    backend: FileBackend, directory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(backend, "kept")
    assert backend.sweep() >= 1  # nobody holds it: removed, as an idle or crashed one
    assert not os.path.exists(_lock_file(directory))
    assert _load(backend) == "kept"  # a new, empty lock file: read from the value store
    # Control: a removal that did not move the record would lose it.
    _store(backend, "lost")
    monkeypatch.setattr(FileBackend, "_move_record", lambda self, name, fd: None)
    backend.sweep()
    assert _load(backend) == "kept"  # the older copy: what the move prevents


def test_a_deleted_record_never_comes_back_from_a_moved_copy(backend: FileBackend) -> None:
    _store(backend, "old")
    backend.sweep()  # "old" moved to the value store
    _store(backend, "newer")
    _store(backend, None)
    assert _load(backend) is None
    backend.sweep()
    assert _load(backend) is None


def test_a_torn_record_reads_as_none_never_as_an_older_copy(
    backend: FileBackend, directory: str
) -> None:
    _store(backend, "older")
    backend.sweep()  # an older copy in the value store
    _store(backend, "latest")
    assert _load(backend) == "latest"  # control
    with open(_lock_file(directory), "r+b") as torn:
        data = torn.read()
        torn.seek(len(data.partition(b"\n")[0]) + 3)
        torn.write(b"X")  # a payload byte: the CRC no longer matches
    assert _load(backend) is None


def test_an_expired_record_reads_as_none(directory: str) -> None:
    clock = Clock()
    backend = _started(directory, clock=clock)
    try:
        _store(backend, "short-lived", ttl=10)
        clock.now += 9
        assert _load(backend) == "short-lived"
        clock.now += 2
        assert _load(backend) is None
    finally:
        backend.close()


def test_tickets_queued_after_a_record_leave_it_whole(backend: FileBackend, directory: str) -> None:
    holder = _held(backend)
    backend.store(holder, "record", None)
    other = _started(directory)
    got: list[Lease | None] = []
    # Daemon, and the holder released whatever happens: a failed assert must not leave a
    # thread waiting forever on a lock nobody gives back (the interpreter would never exit).
    waiter = threading.Thread(target=lambda: got.append(other.acquire(KEY, None)), daemon=True)
    size = os.path.getsize(_lock_file(directory))  # before the waiter can append its ticket
    waiter.start()
    try:
        for _ in range(3000):  # until its ticket is appended (nothing to wait on in the kernel)
            if os.path.getsize(_lock_file(directory)) > size:
                break
            waiter.join(0.01)
        assert os.path.getsize(_lock_file(directory)) > size
    finally:
        backend.release(holder)
    waiter.join(30)
    (lease,) = got
    assert lease is not None
    try:
        assert other.load(lease) == "record"
        other.store(lease, "a record longer than the file was, over the ticket bytes", None)
        assert other.load(lease) == "a record longer than the file was, over the ticket bytes"
    finally:
        other.release(lease)
        other.close()


def test_a_reset_of_the_tickets_keeps_the_record(
    backend: FileBackend, directory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(backend, "record")
    monkeypatch.setattr(_ticketlock, "RESET_SIZE", 100)
    fd = os.open(_lock_file(directory), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"\n" * 200)  # as 200 tickets would
    os.close(fd)
    lease = _held(backend)  # over RESET_SIZE with nobody queued: cut back
    try:
        assert os.path.getsize(_lock_file(directory)) < 100
        assert backend.load(lease) == "record"
    finally:
        backend.release(lease)


def test_a_damaged_header_claiming_a_huge_record_is_neither_read_nor_kept(
    backend: FileBackend, directory: str
) -> None:
    _store(backend, "record")
    with open(_lock_file(directory), "r+b") as damaged:
        damaged.write(b"- 999999999999 00000000\n")  # a length no record has
    assert _load(backend) is None  # here but unreadable: no older copy, no 1 TB read
    assert os.path.getsize(_lock_file(directory)) < 100
