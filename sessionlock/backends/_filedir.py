"""The file backend's directory: refused unless private, and the secret its processes share.

The directory is refused (ConfigurationError) if it is a symlink, not a directory, owned by
another user, or writable by group or others (others may have put files in it); one of ours
that group or others may only read or list (0755) is made 0700 (nothing can have been
planted; only the listing of session hashes leaked). A missing parent of an explicit
directory is created as ``os.makedirs`` would, the directory itself 0700. The directory is
opened once with ``O_NOFOLLOW`` and every name is resolved relative to that descriptor.

The hashing secret is created once per directory (``.secret``, mode 0600, published by an
atomic ``link``), so every process using the directory hashes a session to the same lock
without any configuration. Two live processes never hash differently: a new ``.secret`` is
only made under an exclusive ``flock`` of the directory, i.e. when no live backend (each holds
it shared, taken once it has the secret) could know another one; a backend that starts while
``.secret`` is missing and others hold the directory waits (5 s at most) for their keepers to
put it back, and fails (BackendUnavailable) rather than hash with a secret of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import tempfile
import threading
import time

from ..errors import BackendUnavailable, ConfigurationError

SECRET_FILE = ".secret"  # noqa: S105  (a file name, not a password)
TMP = ".tmp-"  # prefix of a file being written; a crash's leftover after a minute
LOCK = ".lock"  # suffix of a key's lock file (its name: the key's hash)
_SECRET_WAIT = 5.0  # seconds a new backend waits for live ones to put .secret back
_HINT = (
    "; configure a directory only this app's user can create, outside the shared temp"
    ' directory, e.g. backend="file:///var/lib/<app>/sessionlock" (the default under /tmp can'
    " be created first by any local user)"
)


def default_directory() -> str:
    """The default lock directory: private to this user, under the system temp dir."""
    return os.path.join(tempfile.gettempdir(), f"sessionlock-{os.geteuid()}")


def open_private_directory(path: str, *, create: bool, default: bool = False) -> int:
    """A descriptor of ``path``, made or checked private to this user (see module doc)."""
    hint = _HINT if default else "; give a directory of your own"
    if create:
        try:
            if not default:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigurationError(f"cannot create lock directory {path}: {exc}") from exc
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigurationError(f"lock directory {path} is not usable: {exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise ConfigurationError(f"lock directory {path} is a symlink{hint}")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"lock directory {path} is not a directory{hint}")
    if info.st_uid != os.geteuid():
        raise ConfigurationError(
            f"lock directory {path} is owned by uid {info.st_uid}, not by this user"
            f" ({os.geteuid()}): another user could read or break its locks{hint}"
        )
    if info.st_mode & 0o022:
        raise ConfigurationError(
            f"lock directory {path} is writable by group or others"
            f" (mode {stat.S_IMODE(info.st_mode):o}), so others may have put files in it;"
            " remove it, or empty it and chmod 700 it"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) != (info.st_ino, info.st_dev):
            os.close(fd)
            raise ConfigurationError(f"lock directory {path} changed while it was checked")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours, readable by others: nobody could add a file
    except OSError as exc:
        raise ConfigurationError(f"lock directory {path} is not usable: {exc}") from exc
    return fd


def agree_secret(dir_fd: int, directory: str) -> bytes:
    """The directory's secret; a new one only when no live backend holds the directory.

    Live backends hold a shared flock on it, so an exclusive one proves none could know
    another secret. Otherwise wait for a live one's keeper to put ``.secret`` back.
    """
    deadline = time.monotonic() + _SECRET_WAIT
    pause = threading.Event()
    while True:
        secret = _read_secret(dir_fd, directory)
        if secret is not None:
            return secret
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"{directory}/{SECRET_FILE} is missing while other processes use the"
                    " directory, and none put it back: restart them, or give a secret"
                ) from None
            pause.wait(0.02)
            continue
        try:
            publish_secret(dir_fd, secrets.token_bytes(32))
        finally:
            fcntl.flock(dir_fd, fcntl.LOCK_UN)


def _read_secret(dir_fd: int, directory: str) -> bytes | None:
    try:
        fd = os.open(SECRET_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unavailable(exc) from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        data = file.read()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ConfigurationError(
            f"{directory}/{SECRET_FILE} must belong to this user with mode 0600"
        )
    if len(data) != 32:
        raise ConfigurationError(f"{directory}/{SECRET_FILE} is damaged; delete it to renew")
    return data


def publish_secret(dir_fd: int, secret: bytes) -> None:
    """Link a finished ``.secret`` into place; one already there (another's) wins."""
    tmp = f"{TMP}{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, SECRET_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        raise unavailable(exc) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)


def secret_present(dir_fd: int) -> bool:
    """Whether ``.secret`` is still there (the keeper puts it back if not)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        os.close(os.open(SECRET_FILE, flags, dir_fd=dir_fd))
    except FileNotFoundError:
        return False
    return True


def unavailable(error: BaseException | None) -> BaseException:
    """The BackendUnavailable that a file-system error means (configuration errors stay)."""
    if isinstance(error, (BackendUnavailable, ConfigurationError)):
        return error
    if isinstance(error, OSError) and error.errno == errno.ENOENT:
        return BackendUnavailable(f"lock directory is gone: {error}")
    return BackendUnavailable(f"file lock failed: {error}")
