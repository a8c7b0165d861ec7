"""The file backend's small value store: bounded files, expiry as the mtime.

Values live in ``values/<xx>/<name>.value`` (256 buckets by a hash of the name), written by
an atomic rename, with the expiry time as their mtime. A bucket holds at most
``max_values / 256`` (rounded up; 10 000 in all by default, ``?max_values=N`` in the URL): a
``set`` that finds its bucket over it removes the bucket's expired files, then those closest
to expiry, never the one it wrote; every 16th ``set`` also removes the expired files of one
more bucket, in turn. So a flood of identities costs a bounded number of files and a bounded
amount of work per ``set`` (a listing of about 40 names), never a directory scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable

from ._filedir import TMP, unavailable

VALUE = ".value"
VALUES = "values"  # values/<bucket>/<name>.value
_BUCKETS = 256  # value buckets: a set lists one, about max_values / 256 names
_TEND_EVERY = 16  # sets between two expiry sweeps of a further bucket (in turn)
_NEVER = 4_102_444_800.0  # 2100-01-01: the mtime of a value without expiry


class ValueStore:
    """``get``/``set``/``delete`` of short strings under names safe for the file system."""

    def __init__(self, dir_fd: int, *, clock: Callable[[], float], max_values: int) -> None:
        self.dir_fd = dir_fd
        self._clock = clock  # wall time: expiry times are shared by processes
        self._per_bucket = -(-max_values // _BUCKETS)
        self._writes = 0

    def get(self, name: str) -> str | None:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path(name), flags, dir_fd=self.dir_fd)
            with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unavailable(exc) from exc
        expires, value = _parse_value(data)
        if expires is not None and expires <= self._clock():
            return None  # a tending set or the sweep removes the file
        return value

    def set(self, name: str, value: str, ttl: float | None) -> None:
        deadline = None if ttl is None else self._clock() + ttl
        expires = "-" if deadline is None else repr(deadline)
        # The expiry is also the file's mtime, so tending finds expired files by stat alone.
        mtime = _NEVER if deadline is None else deadline
        path = self.path(name)
        tmp = f"{TMP}{secrets.token_hex(8)}"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
                dir_fd=self.dir_fd,
            )
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as file:
                file.write(f"{expires}\n{value}")
                file.flush()
                os.utime(file.fileno(), (mtime, mtime))
            self._publish(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.dir_fd)
            raise unavailable(exc) from exc
        self._writes += 1
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

    def _publish(self, tmp: str, path: str) -> None:
        """Rename the finished ``tmp`` to ``path``, making its bucket at the first value."""
        dir_fd = self.dir_fd
        try:
            os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            for part in (VALUES, path.rpartition("/")[0]):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=dir_fd)
            os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

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

    Expiry is read from the mtime. A value rewritten between the stat and the unlink may be
    removed with its old self: the store may forget a value, as any cache.
    """
    expiries: list[tuple[float, str]] = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            expiries.append((os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime, name))
    expiries.sort()
    keep = len(expiries)
    removed = 0
    for mtime, name in expiries:
        if name == written:
            continue
        if mtime > now and keep <= cap:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
            removed += 1
        keep -= 1
    return removed


def _parse_value(data: str) -> tuple[float | None, str]:
    """(expiry time or None, value); a damaged file reads as already expired."""
    head, _, value = data.partition("\n")
    if head == "-":
        return None, value
    try:
        return float(head), value
    except ValueError:
        return 0.0, ""
