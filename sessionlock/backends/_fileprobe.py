"""Who holds and who waits for each lock file of a ``file://`` directory, without taking
anything: for ``sessionlock held``.

The lock's bytes (:mod:`sessionlock.backends._ticketlock`): byte 0 is write-locked by the
holder or read-locked by readers; every waiter write-locks a ticket byte of its own, after
``BASE``. ``F_OFD_GETLK`` asks the kernel which lock *would* conflict with one we describe,
and locks nothing: byte 0 gives the holder's kind, and stepping from ticket to ticket over
``[BASE + 1, end)`` counts the waiters. The files are opened read-only, and OFD locks belong
to an open file, so the probe changes nothing for the processes using the directory. A
snapshot: a hand-over under way may show a key held and queued for at once, or neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct

from ..errors import ConfigurationError
from ._filedir import LOCK
from ._ticketlock import BASE, FAIR
from .base import HeldKey

__all__ = ["held_keys"]

_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (as _ticketlock)
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def held_keys(directory: str) -> list[HeldKey]:
    """The keys held or queued for in ``directory``, sorted by key."""
    if not FAIR:
        raise ConfigurationError(
            "listing held sessions of file:// needs open-file-description locks (Linux)"
        )
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(directory, flags)
    except OSError as exc:
        raise ConfigurationError(f"lock directory {directory} is not usable: {exc}") from exc
    try:
        found = []
        for name in sorted(os.listdir(dir_fd)):
            if not name.endswith(LOCK):
                continue
            try:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # removed as idle meanwhile
            try:
                held = _probe(fd, name[: -len(LOCK)])
            finally:
                os.close(fd)
            if held is not None:
                found.append(held)
        return found
    finally:
        with contextlib.suppress(OSError):
            os.close(dir_fd)


def _probe(fd: int, key: str) -> HeldKey | None:
    kind = _conflict(fd, 0, 1)[0]
    queued = 0
    start = BASE + 1  # after the desk: the first ticket byte
    while True:
        kind_found, start_found, length = _conflict(fd, start, 0)  # 0: to the end and beyond
        if kind_found == fcntl.F_UNLCK:
            break
        queued += 1
        if length == 0:  # a lock to the end: nothing after it
            break
        start = start_found + length
    if kind == fcntl.F_WRLCK:
        return HeldKey(key, "exclusive", None, queued)
    if kind == fcntl.F_RDLCK:
        return HeldKey(key, "shared", None, queued)
    return HeldKey(key, "free", None, queued) if queued else None


def _conflict(fd: int, start: int, length: int) -> tuple[int, int, int]:
    """(kind, start, length) of a lock another open file holds that a write lock on
    ``[start, start + length)`` would meet; kind F_UNLCK if none."""
    asked = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, asked)
    kind, _, found_start, found_length, _ = struct.unpack(_FLOCK, answer)
    return kind, found_start, found_length
