"""A lock on one open file, first come first served across processes, freed when a holder dies.

``flock`` alone is not fair: on release the kernel wakes the waiters and lets them race, and
the releasing process's next request, already running, usually wins that race again (one
session of 8 clients over 2 workers: p99 99 ms against 45 ms on 1 worker). Here the lock is
made of open-file-description byte locks (``F_OFD_SETLK``: per open file, like ``flock``, so
threads with their own descriptors exclude each other, and freed by the kernel when the last
descriptor closes, SIGKILL included), in a CLH-style queue:

- byte 0, write-locked: the holder; read-locked: the shared holders (readers), any number.
- byte 1, read-locked by every waiter: "someone is queued". The fast path write-locks bytes
  0-1 with no waiting, so it only succeeds when nobody holds *and* nobody waits: a newcomer
  never overtakes a queued request. It then keeps byte 0 only. A reader's fast path locks
  nothing on byte 1: it asks the kernel whether a write lock there would conflict
  (``F_OFD_GETLK``: it would iff another open file holds byte 1, a waiter's mark or a writer
  passing through), and if not read-locks byte 0 without waiting (which fails iff a writer
  holds): it joins the readers holding, never one waiting. Readers arriving at once thus
  never collide (they would on a write lock on byte 1: the loser would queue, a ticket byte
  more). The probe and the read lock are two steps: a writer coming between them arrived
  with the reader, and either goes first (it holds first: the read lock fails, the reader
  queues; or it waits on byte 0 for the readers holding, this one among them). A writer
  queued before the probe keeps byte 1 until it holds byte 0: the probe sees the one or the
  read lock fails on the other, so a reader never overtakes it.
- a ticket per waiter: one byte appended to the file (``O_APPEND``, set on the descriptor
  for that one write, makes the offset atomic across processes); the waiter write-locks
  byte ``BASE + ticket`` (drawing and locking at a "desk", byte ``BASE``, held for those two
  steps, so no later waiter ever sees an earlier ticket not locked yet), then waits for a
  read lock on every earlier ticket byte ``[BASE, BASE + ticket)``, i.e. until each earlier
  waiter has become holder (it then drops its ticket) or died. Only then does it wait for
  byte 0, where at most one waiter is ever blocked: the next in line. A reader waits for a
  read lock there, a writer for a write lock.

Readers and writers share the one line, so the order stays first come, first served between
them: a writer queued behind readers waits (on byte 0) until every reader holding has let go;
a reader queued behind a writer waits for the writer's ticket, then for its write lock; the
readers queued behind it then go in one after another without waiting for each other (each
drops its ticket as soon as it holds). A reader never writes the file: it takes a ticket as
any waiter does, never cuts the tickets back (:func:`reset_if_long` is for a writer).

A waiter only waits on bytes below its own (and on the holder, who waits on nothing), so no
cycle, hence no deadlock, can form; the kernel's deadlock detection does not apply to OFD
locks. A waiter that dies frees its ticket: those behind it move on. Tickets grow by one byte
per contended wait; the file is cut back by a holder that finds it over 64 KiB with nobody
queued (a ticket numbered lower again can at worst overtake one older waiter once: order,
never exclusion, is what a reset may bend). The bytes themselves mean nothing to the lock:
the file backend keeps a session's record at the start of its lock file (a reset keeps it).

Without OFD locks (not Linux) this falls back to plain ``flock`` (``LOCK_EX``, ``LOCK_SH``
for readers): not fair.
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["FAIR", "give", "take_in_turn", "try_take"]

#: Whether the platform has OFD locks, hence first-come-first-served order across processes.
FAIR = hasattr(fcntl, "F_OFD_SETLKW")
BASE = 2  # the first ticket byte
RESET_SIZE = 65_536  # bytes of tickets after which a holder empties the file (if none wait)


def _range(kind: int, start: int, length: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    return struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0)


if FAIR:
    _SET, _WAIT = fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW
    _TAKE_BOTH = _range(fcntl.F_WRLCK, 0, 2)
    _DROP_MARK = _range(fcntl.F_UNLCK, 1, 1)
    _MARK = _range(fcntl.F_RDLCK, 1, 1)
    _HOLD = _range(fcntl.F_WRLCK, 0, 1)
    _SHARE = _range(fcntl.F_RDLCK, 0, 1)
    _GIVE = _range(fcntl.F_UNLCK, 0, 1)
    _CLOSE_LINE = _range(fcntl.F_WRLCK, 1, 1)
    # Byte BASE: no ticket's (tickets are >= 1), the desk where tickets are drawn. Inside
    # every waiter's [BASE, BASE + ticket) wait, so that wait also outlasts a draw under way.
    _DESK = _range(fcntl.F_WRLCK, BASE, 1)
    _LEAVE_DESK = _range(fcntl.F_UNLCK, BASE, 1)
    _PROBE = fcntl.F_OFD_GETLK

    def try_take(fd: int, *, shared: bool = False) -> bool:
        """Hold the lock if nobody holds it and nobody is queued; never wait.

        ``shared``: hold it with the readers, if no writer holds it and nobody is queued.
        """
        if shared:
            return _try_share(fd)
        try:
            fcntl.fcntl(fd, _SET, _TAKE_BOTH)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held, or queued
            return False
        fcntl.fcntl(fd, _SET, _DROP_MARK)
        return True

    def _try_share(fd: int) -> bool:
        # Nobody queued: a write lock on byte 1 would conflict with no other open file's lock
        # (a waiter's mark, or a writer's fast path or reset passing through). F_OFD_GETLK
        # ignores the locks of ``fd``'s own open file description: ``fd`` must hold nothing
        # (the backend's holders each have a description of their own, given back unlocked).
        # A probe, not a lock: readers probing at once never exclude each other.
        found = fcntl.fcntl(fd, _PROBE, _CLOSE_LINE)
        if struct.unpack_from("h", found)[0] != fcntl.F_UNLCK:  # l_type
            return False  # someone is queued (or a writer is taking the lock right now)
        # Then join the readers holding. A writer that came since the probe arrived with us
        # (either goes first); one queued before it keeps byte 1 until it holds byte 0.
        try:
            fcntl.fcntl(fd, _SET, _SHARE)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: a writer holds
            return False
        return True

    def take_in_turn(fd: int, *, shared: bool = False) -> None:
        """Queue behind every earlier waiter, then wait for the holder (blocks the thread);
        ``shared``: then hold with the readers (waits for a writer holding, not for readers)."""
        fcntl.fcntl(fd, _WAIT, _MARK)
        try:
            # At the desk, a ticket is drawn and its byte locked in one step: a later waiter
            # checking the earlier tickets could otherwise find this one not locked yet, and
            # go first (a CI run caught a writer passing a reader that way).
            fcntl.fcntl(fd, _WAIT, _DESK)
            try:
                ticket = _append(fd)
                mine = _range(fcntl.F_WRLCK, BASE + ticket, 1)
                fcntl.fcntl(fd, _WAIT, mine)  # nobody else has this byte: immediate
            finally:
                fcntl.fcntl(fd, _SET, _LEAVE_DESK)
        except BaseException:
            fcntl.fcntl(fd, _SET, _DROP_MARK)
            raise
        try:
            fcntl.fcntl(fd, _WAIT, _range(fcntl.F_RDLCK, BASE, ticket))
            fcntl.fcntl(fd, _SET, _range(fcntl.F_UNLCK, BASE, ticket))
            fcntl.fcntl(fd, _WAIT, _SHARE if shared else _HOLD)
        finally:
            # Out of line in one call, mark and ticket. The bytes between them (the desk, the
            # earlier tickets) are let go already, or go with them if a wait above failed.
            fcntl.fcntl(fd, _SET, _range(fcntl.F_UNLCK, 1, BASE + ticket))

    def give(fd: int) -> None:
        """Release the lock, shared or not (the next in line, if any, takes it)."""
        fcntl.fcntl(fd, _SET, _GIVE)

    def reset_if_long(fd: int, keep: int = 0) -> None:
        """Cut the file back to its first ``keep`` bytes if nobody is queued (called holding
        exclusively, past RESET_SIZE; never by a reader, who may not write the file)."""
        try:
            fcntl.fcntl(fd, _SET, _CLOSE_LINE)
        except (BlockingIOError, PermissionError):
            return  # someone is queued: later
        try:
            os.ftruncate(fd, keep)
        finally:
            fcntl.fcntl(fd, _SET, _DROP_MARK)

    def _append(fd: int) -> int:
        """One byte appended: its end offset, unique and growing across processes.

        ``O_APPEND`` only for this write: Linux's ``pwrite`` appends on an ``O_APPEND``
        descriptor, and the holder writes its record at offset 0 of the same file.
        """
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
        try:
            os.write(fd, b"\n")
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return os.lseek(fd, 0, os.SEEK_CUR)

else:  # pragma: no cover - not Linux

    def try_take(fd: int, *, shared: bool = False) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def take_in_turn(fd: int, *, shared: bool = False) -> None:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)

    def give(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    def reset_if_long(fd: int, keep: int = 0) -> None:
        return None
