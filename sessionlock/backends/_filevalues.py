"""The file backend's small value store: bounded files, expiry as the mtime.

Values live in ``values/<xx>/<name>.value`` (256 buckets by a hash of the name), with the
expiry time as their mtime. A ``set`` rewrites its file in place under an exclusive
``flock``: one ``pwrite``, an ``ftruncate`` if the value got shorter, the expiry set on the
descriptor (tens of microseconds, where a temporary file renamed over the old one costs
hundreds). A ``get`` reads it under a shared ``flock``. So any process may ``get`` and
``set`` any name at any time, not only under a session's lock, and never sees half a value.

A file reads ``<expiry or -> <length> <crc32>\\n<payload>``: the payload's length in bytes and
the CRC-32 of the expiry and payload. A write torn by a crash (or a power loss) is detected:

- bytes past ``length`` are ignored. Only a writer that died between its ``pwrite`` and its
  ``ftruncate`` leaves them (the tail of an older, longer value): what precedes them is the
  whole new value, and its checksum says so;
- a payload shorter than ``length``, or whose checksum differs (a ``pwrite`` cut short over an
  older value), reads as absent.

Files of the older format (``<expiry>\\n<value>``, written by a rename) read as absent too:
values are caches (cookie records), and the next ``set`` of the name rewrites its file.

A bucket holds at most ``max_values / 256`` (rounded up; 10 000 in all by default,
``?max_values=N`` in the URL). A ``set`` that *creates* a file lists its bucket, and if it is
over its share removes the bucket's expired files, then those closest to expiry, never the one
it wrote; a ``set`` that rewrites a file lists nothing. Every 16th ``set`` also removes the
expired files of one more bucket, in turn. So a flood of identities costs a bounded number of
files and a bounded amount of work per ``set`` (a listing of about 40 names), never a
directory scan.

The trimmer removes a file only under its exclusive ``flock``, and only if its mtime is still
the one it listed: never a value being written (``pwrite`` sets the mtime to *now* until the
expiry replaces it), nor one rewritten since the listing. A writer that finds, once it holds
the lock, that its file was removed meanwhile opens the name again: a ``set`` never writes a
value into a removed file, except one that ``delete`` (which just unlinks) removed while it
wrote: then the ``set`` happened before the ``delete``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import zlib
from collections.abc import Callable

from ._filedir import unavailable

VALUE = ".value"
VALUES = "values"  # values/<bucket>/<name>.value
_BUCKETS = 256  # value buckets: a set lists one, about max_values / 256 names
_TEND_EVERY = 16  # sets between two expiry sweeps of a further bucket (in turn)
_NEVER = 4_102_444_800.0  # 2100-01-01: the mtime of a value without expiry
_REOPEN = 4  # opens of a set whose file the trimmer removes between its open and its lock
_READ = 1 << 16  # bytes read at once; values are short (a cookie record: under 12 KiB)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class ValueStore:
    """``get``/``set``/``delete`` of short strings under names safe for the file system."""

    def __init__(self, dir_fd: int, *, clock: Callable[[], float], max_values: int) -> None:
        self.dir_fd = dir_fd
        self._clock = clock  # wall time: expiry times are shared by processes
        self._per_bucket = -(-max_values // _BUCKETS)
        self._writes = 0

    def get(self, name: str) -> str | None:
        try:
            fd = os.open(self.path(name), _READ_FLAGS, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unavailable(exc) from exc
        try:
            # Unlocked explicitly: a child forked meanwhile shares the lock until it closes
            # its copy of the descriptor, and it would hold back every writer of the name.
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                data = _read_all(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise unavailable(exc) from exc
        finally:
            os.close(fd)
        parsed = parse(data)
        if parsed is None:
            return None  # torn, damaged or of the older format: absent, as an evicted value
        expires, value = parsed
        if expires is not None and expires <= self._clock():
            return None  # a tending set or the sweep removes the file
        return value

    def set(self, name: str, value: str, ttl: float | None) -> None:
        deadline = None if ttl is None else self._clock() + ttl
        data = pack(value, deadline)
        # The expiry is also the file's mtime, so tending finds expired files by stat alone.
        mtime = _NEVER if deadline is None else deadline
        path = self.path(name)
        try:
            created = self._write(path, data, mtime)
        except OSError as exc:
            raise unavailable(exc) from exc
        self._writes += 1
        if created:  # only a new file can take its bucket over its share
            bucket, _, written = path.rpartition("/")
            self.tend(bucket, written)
        if self._writes % _TEND_EVERY == 0:
            self.tend(f"{VALUES}/{self._writes // _TEND_EVERY % _BUCKETS:02x}", None)

    def delete(self, name: str) -> None:
        try:
            os.unlink(self.path(name), dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise unavailable(exc) from exc

    def path(self, name: str) -> str:
        """Where ``name``'s value is filed, relative to the directory."""
        name += VALUE
        bucket = hashlib.blake2b(name.encode(), digest_size=1).hexdigest()
        return f"{VALUES}/{bucket}/{name}"

    def _write(self, path: str, data: bytes, mtime: float) -> bool:
        """Write ``data`` over ``path``'s file in place; whether the file is new."""
        for _ in range(_REOPEN):
            fd = self._open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    info = os.fstat(fd)
                    if info.st_nlink == 0:
                        continue  # trimmed between the open and the lock: open the name again
                    created = info.st_size == 0  # or left empty by a creator that died
                    try:
                        _write_all(fd, data)
                        if info.st_size > len(data):  # (a truncate to the same size costs)
                            os.ftruncate(fd, len(data))
                        os.utime(fd, (mtime, mtime))
                    except OSError:
                        if created:  # a full disk: leave no empty file (and inode) behind
                            with contextlib.suppress(OSError):
                                os.unlink(path, dir_fd=self.dir_fd)
                        raise
                    return created
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: see get
            finally:
                os.close(fd)
        return False  # trimmed at every turn: the value is lost, as any evicted one

    def _open(self, path: str) -> int:
        """A descriptor of ``path``'s file, created if absent, with its bucket at the first."""
        dir_fd = self.dir_fd
        try:
            return os.open(path, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
        except FileNotFoundError:
            for part in (VALUES, path.rpartition("/")[0]):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=dir_fd)
            return os.open(path, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)

    def tend(self, bucket: str, written: str | None) -> int:
        """Bound one bucket; best effort (a failure here never fails the ``set``).

        If it holds more than its share of ``max_values``, or ``written`` is None (the
        rotating sweep), its expired files go; then, beyond its share, those closest to
        expiry, never ``written``. Returns the files removed.
        """
        try:
            fd = os.open(bucket, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            return 0
        try:
            names = os.listdir(fd)
            if written is not None and len(names) <= self._per_bucket:
                return 0
            return _trim_bucket(fd, names, written, self._clock(), self._per_bucket)
        except OSError:
            return 0
        finally:
            os.close(fd)

    def sweep(self, buckets: list[str]) -> int:
        """Remove the expired values of every bucket listed; returns the files removed."""
        return sum(self.tend(f"{VALUES}/{bucket}", None) for bucket in buckets)


def _trim_bucket(fd: int, names: list[str], written: str | None, now: float, cap: int) -> int:
    """Unlink the expired files of a bucket, then the earliest to expire beyond ``cap``.

    Expiry is read from the mtime, and a file goes only if it still has the one listed
    (:func:`_remove`). A file rewritten between the listing and its removal is kept, and the
    bucket may stay over its share until a later ``set``.
    """
    expiries: list[tuple[int, str]] = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            expiries.append((os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime_ns, name))
    expiries.sort()
    keep = len(expiries)
    removed = 0
    for mtime_ns, name in expiries:
        if name == written:
            continue
        if mtime_ns / 1e9 > now and keep <= cap:
            break
        if _remove(fd, name, mtime_ns):
            removed += 1
            keep -= 1
    return removed


def _remove(bucket_fd: int, name: str, mtime_ns: int) -> bool:
    """Unlink ``name`` if no one is reading or writing it and its mtime is still ``mtime_ns``."""
    try:
        fd = os.open(name, _READ_FLAGS | os.O_NONBLOCK, dir_fd=bucket_fd)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being read or written: not stale
        try:
            info = os.fstat(fd)
            if info.st_nlink == 0 or info.st_mtime_ns != mtime_ns:
                return False  # removed, or rewritten, since it was listed
            # Unlinked under the lock: a writer waiting for it finds it unlinked, and
            # opens the name again.
            os.unlink(name, dir_fd=bucket_fd)
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    done = os.pwrite(fd, data, 0)
    if done == len(data):
        return
    view = memoryview(data)
    while done < len(data):
        wrote = os.pwrite(fd, view[done:], done)
        if wrote <= 0:
            raise OSError(errno.EIO, "a value write made no progress")
        done += wrote


def _read_all(fd: int) -> bytes:
    data = os.pread(fd, _READ, 0)
    if len(data) < _READ:
        return data
    parts = [data]
    while len(data) == _READ:
        data = os.pread(fd, _READ, _READ * len(parts))
        parts.append(data)
    return b"".join(parts)


def pack(value: str, deadline: float | None) -> bytes:
    """``value`` as stored: the header line (expiry, length, CRC-32), then the payload."""
    # Microseconds, fixed width (until 2286): a rewrite's length changes only with the
    # value's, and an unchanged length needs no ftruncate.
    expires = b"-" if deadline is None else b"%.6f" % deadline
    payload = value.encode("utf-8", "surrogatepass")
    check = zlib.crc32(payload, zlib.crc32(expires))
    return b"%s %d %08x\n%s" % (expires, len(payload), check, payload)


def parse(data: bytes) -> tuple[float | None, str] | None:
    """(expiry time or None, value) of what :func:`pack` made; None for anything else (no
    whole value: empty, torn, or of the older format)."""
    head, newline, rest = data.partition(b"\n")
    fields = head.split(b" ")
    if not newline or len(fields) != 3:
        return None  # empty (being created: no one sees that under the lock), older format
    expires, length, check = fields
    try:
        size = int(length)
        crc = int(check, 16)
        deadline = None if expires == b"-" else float(expires)
    except ValueError:
        return None
    payload = rest[:size]  # past the length: an older value's tail, the ftruncate never ran
    if size < 0 or len(payload) != size or zlib.crc32(payload, zlib.crc32(expires)) != crc:
        return None
    try:
        return deadline, payload.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
