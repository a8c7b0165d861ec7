"""``file:///dir``: one session serialized across every worker process of a host.

    from sessionlock.wsgi import SessionLockMiddleware
    app = SessionLockMiddleware(app, backend="file:///var/lib/myapp/sessionlock")

Each held key is a lock on ``<dir>/<key>.lock``, where ``key`` is already the keyed hash of
the session key (never a raw id): open-file-description byte locks queued first come, first
served across processes (:mod:`sessionlock.backends._ticketlock`; plain ``flock`` where the
platform has no OFD locks). Like ``flock`` they belong to the open file, so two ``open()``s
exclude each other even in one process, and the kernel drops them when a holder dies (SIGKILL
included): the next waiter runs at once. Classic record locks (``F_SETLK``) are never used:
they are per process and any ``close()`` drops them.

Waiting. Inside a process only the head of a key's local FIFO queue asks the backend
(:mod:`sessionlock.core`), so at most one request per (process, key) contends here (or the
readers at its head: see shared leases below). It first tries without waiting, which fails
while anyone holds *or is queued*. If the key is busy, the request waits in this process's
line (:mod:`sessionlock.backends._filewaiters`): one contender per (process, key) queues in
the kernel on a helper thread and hands the lock to a waiting thread or task, so the ASGI
path never blocks the event loop, and a timed-out or cancelled wait never leaks a lock.

Shared leases (readers, ``shared=True``). A reader read-locks the holder's byte, so readers
hold at once, each on a descriptor of its own (OFD locks of one open file never conflict);
a writer excludes them all. Readers and writers queue in one line, first come first served,
in this process (the contender serves its waiters in order, each in its own mode: readers in
a row go in one after another, a writer waits for every reader before it) and across
processes (the kernel's ticket line, :mod:`sessionlock.backends._ticketlock`): a reader never
overtakes a writer queued before it, nor a writer a reader. A reader may :meth:`load` the
record, never :meth:`store` or :meth:`mark` (ValueError), and never writes the file (only a
writer cuts the tickets back). The janitor's lock is a writer's: it never removes a file a
reader holds.

Bounded files. Releasing only unlocks: a session's next request reuses its file, and the
files of keys a process stopped using are removed by a janitor thread
(:mod:`sessionlock.backends._filejanitor`): it takes the lock without waiting (skipping keys
in use) and unlinks the file *before* unlocking. A waiter that opened the old inode then wins
a lock on an unlinked file; after every lock the open file's link count is checked
(``fstat``: no path lookup) and the attempt retried on an unlinked one, so two holders can
never hold two different inodes of one path (filelock#574's trap). Files left by a crashed
process are removed by :meth:`sweep`, which a backend runs in its keeper thread when it
starts (:mod:`sessionlock.backends._filekeeper`: in the background, so a large directory
never delays startup).

Safety and the shared hashing secret: :mod:`sessionlock.backends._filedir`. Lock files are
opened with ``O_CLOEXEC``; besides the held ones, a process keeps (unlocked) the descriptors
of the 64 keys it used last, so a session's next request skips ``open()``. A process forked
while holding locks closes its inherited copies at once, so a child never keeps a parent's
session locked; a gunicorn master, which serves no request, holds none.

Descriptors. :func:`sessionlock.backends.from_url` makes one backend per directory per
process, shared by every middleware naming it: one directory descriptor plus at most 64 idle
lock-file descriptors (and those of the locks held right now), however many middleware
instances a process builds. :meth:`FileBackend.close` closes them (leases held at that moment
are still released normally); a closed backend answers BackendUnavailable.

Event loop. An uncontended ASGI request on a key used lately costs two non-waiting
``fcntl`` calls, an ``fstat`` and one more ``fcntl`` to release, on an open descriptor, none
of which waits on a disk or on another process; a key not among the 64 kept open adds one
``open()`` (``O_CREAT``). A tracked cookie session adds one ``pwrite`` of its record and a
``utime`` on that same descriptor: page-cache writes measured at about 4 µs (if 16 in a row
take over 1 ms, records leave the loop until 1024 in a row take less: :attr:`inline_records`).
Waiting happens on a helper thread, removal of idle files in the janitor thread. Not for the
loop: making a backend (mkdir, open, the sweep; ``secret()`` reads or creates ``.secret``)
and the value store (a file read or an in-place write, on the caller's thread).

Under ``/tmp``. While a backend lives it holds a shared ``flock`` on the directory itself, so
systemd-tmpfiles' aging skips the directory and everything in it (``.secret`` included); see
:data:`_TMPFILES`. Every live backend's keeper thread also puts ``.secret`` back from memory,
once a second, if something else removed it.

Records (cookie sessions). A held session's record is written at the start of its own lock
file, on the descriptor the lease holds (:mod:`sessionlock.backends._lockrecord`): one
``pwrite`` and the stamp's ``utime``, cheap enough for an event loop. A key's first record,
and the record of a lock file the janitor removes, live in the value store
(:mod:`sessionlock.backends._filevalues`), where :meth:`FileBackend.load` looks when the lock
file has none.

Degrading. A full disk, a read-only one or no descriptor left (ENOSPC, EROFS, EMFILE) makes
the call raise BackendUnavailable and nothing else; nothing is remembered, so the first call
after the disk recovers works.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..errors import BackendUnavailable, ConfigurationError
from . import _filekeeper, _lockrecord, _ticketlock
from ._filedir import (
    LOCK,
    agree_secret,
    default_directory,
    open_private_directory,
    publish_secret,
    secret_present,
    unavailable,
)
from ._filejanitor import IdleFiles
from ._filevalues import ValueStore
from ._filewaiters import Line, Locked
from .base import DEFAULT_MAX_VALUES, Backend, HeldKey, Lease, check_max_values

__all__ = ["FileBackend", "default_directory", "from_url", "held_keys", "normalize"]

logger = logging.getLogger("sessionlock")

_NOTHING: tuple[int, ...] = ()  # no descriptor to close
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Not O_APPEND: the record is written at offset 0 (_ticketlock sets it for a ticket's write).
_OPEN_LOCK = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
# A record write over 1 ms, 16 times in a row (one alone may be a preemption), stops record
# writes on event loops: the file system is slow (network, failing disk). 1024 in a row under
# 1 ms (timed in the worker threads) bring them back: a stall that passed (a paused VM, a
# profiler attached, a disk's hiccup) does not cost every later write a thread hop. At most
# 16 slow writes on the loop per 1024 fast ones, if the file system flaps.
_SLOW_RECORD, _SLOW_STREAK, _FAST_STREAK = 0.001, 16, 1024
#: systemd-tmpfiles skips a directory that someone holds a BSD lock on. tmpfiles.d(5), "Age"
#: (systemd 252): "If the aging algorithm finds a lock is already taken on some directory, it
#: (and everything below it) is skipped. Applications may use this to temporarily exclude
#: certain directory subtrees from the aging algorithm: the applications can take a BSD file
#: lock themselves, and as long as they keep it aging of the directory and everything below
#: it is disabled." (It tests with LOCK_EX|LOCK_NB, so our LOCK_SH is enough; checked with
#: systemd-tmpfiles 252 --clean: old files kept while held, removed once released.)
_TMPFILES = "tmpfiles.d(5)"
_OPEN_FILES = 64  # unlocked descriptors kept open for the keys used last, per process


class FileBackend(Backend):
    """Locks and notes kept in one private directory (see the module docstring)."""

    shared = True

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        max_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        self.directory = os.path.abspath(os.fspath(directory or default_directory()))
        self.max_values = check_max_values(max_values)
        default = self.directory == default_directory()
        self._dir_fd = open_private_directory(self.directory, create=create, default=default)
        try:
            self._secret = agree_secret(self._dir_fd, self.directory)
            fcntl.flock(self._dir_fd, fcntl.LOCK_SH)  # see _TMPFILES; held until close
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._values = ValueStore(self._dir_fd, clock=clock, max_values=max_values)
        self._clock = clock
        # Record writes in a row that argue for the other place: slow ones while inline, fast
        # ones while off the loop (counted without a lock: a streak need not be exact).
        self._streak = 0
        self._mutex = threading.Lock()
        self._line = Line(self._take_in_turn, self._unlock_fd, self._lease)
        self._held: dict[int, str] = {}  # fd -> file name, for fork safety and tests
        self._stamps = True  # whether the file system keeps exact mtimes (see mark)
        self._stamps_checked = False
        self._janitor = IdleFiles(self._mutex, self._unlink_if_free)
        # Unlocked descriptors kept for the keys used last (name -> fd): a session's next
        # request skips open().
        self._open: dict[str, int] = {}
        self._closed = False
        self._stop = threading.Event()
        self.swept = threading.Event()  # set when the start sweep is over (for tests)
        self._keeper_pid = 0
        self._keeper: threading.Thread | None = None
        _after_fork.add(self)
        self._ensure_keeper()

    def __repr__(self) -> str:
        return f"FileBackend({self.directory!r})"

    # -- secret ------------------------------------------------------------------------

    def secret(self) -> bytes:
        """The directory's hashing secret, agreed when the backend started."""
        return self._secret

    # -- the keeper ----------------------------------------------------------------------

    def _ensure_keeper(self) -> None:
        """Start this process's keeper thread (again after a fork: threads do not survive)."""
        if self._keeper_pid == os.getpid():
            return
        self._keeper_pid = os.getpid()  # 0 again in a forked child (_forget_after_fork)
        self._keeper = _filekeeper.start(self, self._stop)

    def keep(self) -> None:
        """Put ``.secret`` back from memory if it is gone (the keeper's step, every second)."""
        if not secret_present(self._dir_fd):
            publish_secret(self._dir_fd, self._secret)

    # -- locks -------------------------------------------------------------------------

    # Shared leases: each holder has a descriptor (an open file description) of its own, as
    # OFD locks of one description never conflict: the kept descriptor goes to one of them,
    # the others open the file again. A reader holds byte 0 read-locked (_ticketlock).

    def try_acquire(self, key: str, *, shared: bool = False) -> Lease | None:
        if not self._keeper_pid:
            self._ensure_keeper()
        if self._line.busy(key):  # our own contender is in line for it already
            return None
        got = self._lock(self._name(key, LOCK), blocking=False, shared=shared)
        if got is None:
            return None
        return Lease(key, got[0], got[1] if self._stamps else None, shared=shared)  # as _lease

    def acquire(self, key: str, timeout: float | None, *, shared: bool = False) -> Lease | None:
        if timeout is not None and timeout <= 0:
            return self.try_acquire(key, shared=shared)
        got = self._line.wait(key, timeout, shared)
        return None if got is None else self._lease(key, got, shared)

    def acquire_future(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> asyncio.Future[Lease | None]:
        """The lock's future itself: its arrival wakes the awaiting task in one loop step."""
        if timeout is not None and timeout <= 0:
            done: asyncio.Future[Lease | None] = asyncio.get_running_loop().create_future()
            done.set_result(self.try_acquire(key, shared=shared))
            return done
        return self._line.future(key, timeout, shared)

    async def acquire_async(
        self, key: str, timeout: float | None, *, shared: bool = False
    ) -> Lease | None:
        return await self._await_lease(self.acquire_future(key, timeout, shared=shared))

    def release(self, lease: Lease) -> None:
        fd = lease.token
        if not isinstance(fd, int):
            raise ValueError(f"{lease!r} is not a lease of {self!r}")
        lease.token = None  # a second release is a no-op, never a close of a reused fd
        self._unlock_fd(fd)

    def mark(self, lease: Lease) -> int | None:
        """A new stamp: the lock file's mtime, set to the wall clock in ns (a metadata write
        on the open descriptor, no path lookup). Every locker reads it with the ``fstat``
        it makes anyway. A file system that cannot keep an exact ns mtime keeps no stamps.
        Not under a shared lease (ValueError): a reader changes nothing."""
        if lease.shared:
            raise ValueError(f"{lease!r} is shared: it may load the record, never mark it")
        fd = lease.token
        if not self._stamps or not isinstance(fd, int):
            return None
        stamp = time.time_ns()
        if stamp == lease.stamp:
            stamp += 1
        try:
            os.utime(fd, ns=(stamp, stamp))
            if not self._stamps_checked:  # once: a file system keeps one granularity
                if os.fstat(fd).st_mtime_ns != stamp:  # a coarse clock (1 s, 2 s): no stamps
                    self._stamps = False
                    return None
                self._stamps_checked = True
        except OSError as exc:
            raise unavailable(exc) from exc
        lease.stamp = stamp
        return stamp

    # -- records (see _lockrecord) ---------------------------------------------------------

    inline_records = True  # a pread or a pwrite and a utime on the held descriptor

    def load(self, lease: Lease) -> str | None:
        fd = self._held_fd(lease)
        try:
            found = _lockrecord.read(fd)
        except OSError as exc:
            raise unavailable(exc) from exc
        if not found.here:
            return self._values.get(self._name(lease.key, ""))
        if found.deadline is not None and found.deadline <= self._clock():
            return None
        return found.value

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int | None:
        """The record written in place at the start of the held lock file, then stamped.

        The write itself changes the file's mtime (to the kernel's coarse clock, never a stamp
        set before: those are exact ns), so a crash before the stamp still makes others read
        again. Writes slower than 1 ms, 16 in a row (a slow or network file system), stop
        records being written on event loops until 1024 in a row are fast again; each switch
        is logged.
        """
        fd = self._held_fd(lease, writing=True)
        started = time.perf_counter()
        deadline = None if ttl is None else self._clock() + ttl
        try:
            _lockrecord.write(fd, value or "", deadline)
        except OSError as exc:
            raise unavailable(exc) from exc
        stamp = self.mark(lease)
        if value is None:  # and a copy the janitor moved to the value store, if any
            self._values.delete(self._name(lease.key, ""))
        inline = self.inline_records
        if (time.perf_counter() - started > _SLOW_RECORD) != inline:
            self._streak = 0  # as expected where records are written now
        else:
            self._streak += 1
            if self._streak >= (_SLOW_STREAK if inline else _FAST_STREAK):
                self._streak = 0
                self._place_records(inline=not inline)
        return stamp

    def _place_records(self, *, inline: bool) -> None:
        self.inline_records = inline
        if inline:
            logger.info(
                "%r: %d session record writes in a row took under %g ms; records are written "
                "on the event loop again",
                self,
                _FAST_STREAK,
                _SLOW_RECORD * 1000,
            )
        else:
            logger.warning(
                "%r: %d session record writes in a row took over %g ms; records are written "
                "off the event loop until they are fast again",
                self,
                _SLOW_STREAK,
                _SLOW_RECORD * 1000,
            )

    def _held_fd(self, lease: Lease, *, writing: bool = False) -> int:
        fd = lease.token
        if not isinstance(fd, int):
            raise ValueError(f"{lease!r} is not a held lease of {self!r}")
        if writing and lease.shared:
            raise ValueError(f"{lease!r} is shared: it may load the record, never change it")
        return fd

    def _lease(self, key: str, got: Locked, shared: bool = False) -> Lease:
        return Lease(key, got[0], got[1] if self._stamps else None, shared=shared)

    def held(self) -> int:
        """How many locks this process holds right now (for tests and benchmarks)."""
        return len(self._held)

    def waiting(self, key: str) -> int:
        """How many of this process's requests wait for ``key`` here (for tests)."""
        return self._line.waiting(key)

    def _take_in_turn(self, key: str, shared: bool) -> Locked:
        """The key's lock, waited for in its turn across processes (the line's contender)."""
        got = self._lock(self._name(key, LOCK), blocking=True, shared=shared)
        assert got is not None  # a blocking lock returns one or raises
        return got

    def _lock(self, name: str, *, blocking: bool, shared: bool = False) -> Locked | None:
        """Lock ``name``'s current inode: (fd, stamp); None if busy (or queued for) and not
        ``blocking``. ``shared``: with the readers (busy: a writer holds, or anyone queues)."""
        mutex = self._mutex  # taken by hand on this path: half the cost of ``with``
        while True:
            mutex.acquire()  # a descriptor this process keeps open for the key, if any
            try:
                fd = self._open.pop(name, None)
            finally:
                mutex.release()
            if fd is None:
                try:
                    fd = os.open(name, _OPEN_LOCK, 0o600, dir_fd=self._dir_fd)
                except OSError as exc:
                    if self._closed:
                        raise BackendUnavailable(f"{self!r} is closed") from exc
                    raise unavailable(exc) from exc
            try:
                if blocking:
                    _ticketlock.take_in_turn(fd, shared=shared)
                elif not _ticketlock.try_take(fd, shared=shared):
                    self._keep_open(name, fd)
                    return None
                # An inode its holder unlinked before unlocking has st_nlink 0: retry on the
                # current file. As stat(path) vs fstat: lock files are only unlinked.
                info = os.fstat(fd)
                # Only a writer cuts the tickets back: a reader never writes the file.
                if not shared and info.st_nlink and info.st_size > _ticketlock.RESET_SIZE:
                    _ticketlock.reset_if_long(fd, _lockrecord.extent(fd))
            except BaseException as exc:
                os.close(fd)  # drops whatever this descriptor held
                raise unavailable(exc) from exc
            if not info.st_nlink:
                os.close(fd)
                continue
            mutex.acquire()
            try:
                self._held[fd] = name
            finally:
                mutex.release()
            return fd, info.st_mtime_ns

    def _keep_open(self, name: str, fd: int) -> None:
        """Keep ``fd`` (unlocked) for the key's next request; close the oldest beyond 64."""
        with self._mutex:
            extra = self._kept(name, fd)
        for unused in extra:
            os.close(unused)

    def _kept(self, name: str, fd: int) -> Sequence[int]:
        # Under the mutex: file ``fd`` as the key's open descriptor; returns those to close.
        if self._closed:  # a closed backend keeps nothing
            return [fd]
        opened = self._open
        previous = opened.pop(name, None)
        opened[name] = fd
        if previous is None and len(opened) <= _OPEN_FILES:
            return _NOTHING  # the usual case: no list made
        extra = [] if previous is None else [previous]
        if len(opened) > _OPEN_FILES:
            extra.append(opened.pop(next(iter(opened))))
        return extra

    def _unlock_fd(self, fd: int) -> None:
        """Unlock; the file (and its descriptor) stay for the key's next request, until idle."""
        try:
            _ticketlock.give(fd)  # for every copy of the fd, a forked one too
        except BaseException:
            with self._mutex:
                self._held.pop(fd, None)
            os.close(fd)
            raise
        now = time.monotonic()
        behind, sweep = None, False
        mutex = self._mutex
        mutex.acquire()  # by hand, as in _lock
        try:
            # Given back before it is kept: a descriptor another thread may pop and lock
            # must not still hold (OFD locks of one open file never conflict).
            name = self._held.pop(fd, None)
            extra = [fd] if name is None else self._kept(name, fd)
            if name is not None:
                behind, sweep = self._janitor.released(name, now)
        finally:
            mutex.release()
        for unused in extra:
            os.close(unused)
        if behind is not None:
            self._unlink_if_free(behind)
        if sweep:
            self._janitor.start()

    def _unlink_if_free(self, name: str) -> bool:
        """Lock ``name`` if nobody holds it, then unlink it *before* unlocking.

        A process that opened the old inode meanwhile wins a lock on an unlinked file; the
        link-count check in :meth:`_lock` sends it to the current file.
        """
        try:
            got = self._lock(name, blocking=False)
        except BackendUnavailable:
            return False
        if got is None:
            return False
        fd = got[0]
        with self._mutex:
            self._held.pop(fd, None)
        removed = False
        try:
            try:
                self._move_record(name, fd)
                os.unlink(name, dir_fd=self._dir_fd)
                removed = True
            except (OSError, BackendUnavailable):
                pass  # a read-only or full disk: the file, and its record, stay
            _ticketlock.give(fd)
        finally:
            os.close(fd)
        return removed

    def _move_record(self, name: str, fd: int) -> None:
        """Before an idle lock file goes, its live record goes to the value store: where a
        reader looks when the key's next lock file (a new, empty one) has none."""
        found = _lockrecord.read(fd)
        if not found.here:
            return  # nothing here: what the value store holds is still the latest
        value_name = name[: -len(LOCK)]  # as _name(key, "")
        now = self._clock()
        if found.value is None or (found.deadline is not None and found.deadline <= now):
            self._values.delete(value_name)  # none here: no older copy may come back
        else:
            ttl = None if found.deadline is None else found.deadline - now
            self._values.set(value_name, found.value, ttl)

    # -- values ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        return self._values.get(self._name(key, ""))

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self._ensure_keeper()
        self._values.set(self._name(key, ""), value, ttl)

    def delete(self, key: str) -> None:
        self._values.delete(self._name(key, ""))

    # -- housekeeping --------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove expired values, stale temporary files and crashed holders' lock files.

        The keeper thread runs it when the backend starts; returns the files removed.
        """
        return _filekeeper.sweep(self._dir_fd, self._values, self._sweep_lock)

    def _sweep_lock(self, name: str) -> bool:
        # A file nobody holds: lock it (the protocol's own way) and unlink it.
        with self._mutex:
            self._janitor.forget(name)
        return self._unlink_if_free(name)

    def close(self) -> None:
        """Close the directory and the idle descriptors; leave the registry. Idempotent.

        Leases held now stay valid: their release unlocks and closes them. Anything else
        asked of a closed backend raises BackendUnavailable.
        """
        super().close()
        self._stop.set()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            # Whatever it is doing (putting .secret back, the start sweep) ends before the
            # directory is let go: a caller removing it next (a test, an uninstall) races
            # with nothing.
            keeper.join(_filekeeper.KEEPER_JOIN)
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            kept, self._open = list(self._open.values()), {}
            dir_fd, self._dir_fd = self._dir_fd, -1  # never an *at() call on a reused number
        _after_fork.discard(self)
        for fd in [*kept, dir_fd]:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _name(self, key: str, suffix: str) -> str:
        # bytes.isalnum: a table look-up per character, a third of str.isalnum's time (the
        # same answer for ASCII); every request's lock file name passes here.
        if (
            len(key) <= 128
            and key.isascii()
            and (key.encode().isalnum() or _SAFE_NAME.fullmatch(key))
        ):
            return key + suffix  # a hex digest (as from Core) or another safe name
        # Not a hash already: never let it reach the file system as given.
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=self.secret())
        return "h" + digest.hexdigest()[:64] + suffix

    def _forget_after_fork(self) -> None:
        # In a child forked while this process held locks: drop the copies, never unlock
        # (LOCK_UN would release the parent's lock), and forget the parent's contenders.
        self._mutex = threading.Lock()
        self._line.forget()
        self._janitor = IdleFiles(self._mutex, self._unlink_if_free)
        self._stop = threading.Event()  # the parent's keeper stays the parent's
        self._keeper_pid = 0  # this process starts its own at its first lock or value
        self._keeper = None
        for fd in self._open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open = {}
        for fd in self._held:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held = {}


_after_fork: weakref.WeakSet[FileBackend] = weakref.WeakSet()


def _reset_in_child() -> None:
    for backend in list(_after_fork):
        backend._forget_after_fork()


os.register_at_fork(after_in_child=_reset_in_child)


def normalize(url: str) -> str:
    """One spelling per directory: ``file:///dir`` for ``file://localhost/dir/``, ``file://``.

    Textual only (no symlink is resolved): two spellings that the file system alone makes
    one directory get two backends, which still exclude each other through the locks. A
    ``max_values`` other than the default stays in the URL.
    """
    directory, max_values = _parse(url)
    suffix = "" if max_values == DEFAULT_MAX_VALUES else f"?max_values={max_values}"
    return "file://" + quote(directory) + suffix


def from_url(url: str) -> FileBackend:
    """A new backend on ``file:///absolute/dir[?max_values=N]`` (``file://``: the default).

    :func:`sessionlock.backends.from_url` shares one per directory per process.
    """
    directory, max_values = _parse(url)
    return FileBackend(directory, max_values=max_values)


def _parse(url: str) -> tuple[str, int]:
    """(directory, max_values) of a ``file://`` URL."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.fragment:
        raise ConfigurationError(f"file:// takes an absolute path only, got {url!r}")
    options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    if set(options) - {"max_values"} or len(options.get("max_values", [""])) != 1:
        raise ConfigurationError(f"file:// takes only ?max_values=N, got {url!r}")
    try:
        max_values = int(options.get("max_values", [str(DEFAULT_MAX_VALUES)])[0])
    except ValueError:
        raise ConfigurationError(f"max_values must be an int, got {url!r}") from None
    path = unquote(parts.path)
    if not path:
        return default_directory(), check_max_values(max_values)
    if not os.path.isabs(path):
        raise ConfigurationError(f"file:// needs an absolute path, got {url!r}")
    return os.path.normpath(path), check_max_values(max_values)


def held_keys(url: str) -> list[HeldKey]:
    """The keys held or queued for in a ``file://`` URL's directory, probed without taking
    any lock or starting a backend (``sessionlock held``): see :mod:`._fileprobe`."""
    from ._fileprobe import held_keys as probe

    return probe(_parse(url)[0])
