"""A session's record kept at the start of its own lock file, read and written by its holder.

A cookie record changes with every response that sets the session cookie, and it is only
ever read or written by the holder of the session's lock. Writing it into the lock file
itself, on the descriptor the lease already holds open, is one ``pwrite`` (about 1.5 µs,
into the page cache) where a file of its own costs an ``open``, a ``flock``, the write and a
``close`` (about 25 µs); the new stamp is the ``utime`` the mark made anyway.

The bytes are the value store's format (:func:`~sessionlock.backends._filevalues.pack`):
expiry, length, CRC-32, payload. Ticket bytes (``_ticketlock``) are appended after it and
may be overwritten by a longer record: the lock only uses byte *ranges*, never the bytes.
What the start of a lock file can say:

- a record: the session's latest (or nothing, if expired);
- an empty payload: the record was deleted here; nothing is looked up elsewhere;
- nothing that parses (a new file, tickets only): the record, if any, is in the value store
  (a key's first record is written there before anyone can hold its lock, and the janitor
  moves a record there before it removes an idle lock file).
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from ._filevalues import pack, parse

__all__ = ["Found", "extent", "read", "write"]

_FIRST_READ = 16_384  # bytes read at once: a record is rarely longer
_MAX_RECORD = 1 << 20  # a header claiming more is damage: never read (or kept) that much


class Found(NamedTuple):
    """What the start of a lock file says."""

    here: bool  # False: nothing (a new file, tickets only): look in the value store
    value: str | None  # None if ``here``: deleted, or torn by a crash (never an older copy)
    deadline: float | None  # the record's expiry (None: none)


def read(fd: int) -> Found:
    """The record at the start of ``fd``'s file (expired or not: the caller's clock says)."""
    data = os.pread(fd, _FIRST_READ, 0)
    size = _size(data)
    if size is None:
        return Found(False, None, None)
    if size > _MAX_RECORD:
        return Found(True, None, None)
    parsed = parse(data if size <= len(data) else os.pread(fd, size, 0))
    if parsed is None:
        return Found(True, None, None)
    deadline, value = parsed
    return Found(True, value or None, deadline)


def write(fd: int, value: str, deadline: float | None) -> None:
    """Write ``value`` (``""``: deleted) at the start of ``fd``'s file, which the caller holds.

    Whatever followed an older, longer record stays after it and is never read (the length
    says where the record ends). ``fd`` must not be ``O_APPEND`` (Linux's ``pwrite`` would
    append).
    """
    data = pack(value, deadline)
    done = os.pwrite(fd, data, 0)
    while done < len(data):  # a regular file's pwrite is whole but for a full disk
        wrote = os.pwrite(fd, data[done:], done)
        if wrote <= 0:
            raise OSError(errno.ENOSPC, "a record write made no progress")
        done += wrote


def extent(fd: int) -> int:
    """How many leading bytes of ``fd``'s file the record takes (0: none), to keep on a reset."""
    data = os.pread(fd, 64, 0)
    size = _size(data)
    return 0 if size is None or size > _MAX_RECORD else size


def _size(data: bytes) -> int | None:
    """The whole record's size in bytes, from its header line; None if there is none."""
    head, newline, _ = data.partition(b"\n")
    fields = head.split(b" ")
    if not newline or len(fields) != 3 or not fields[1].isdigit():
        return None
    return len(head) + 1 + int(fields[1])
