"""The keeper: each live file backend's thread, for what no request should wait for.

When the backend starts it sweeps the directory once (expired values, a crash's temporary
files, lock files nobody holds: a crashed process's), in the background, so a large
directory never delays startup. Then, once a second, it puts ``.secret`` back from memory if
something removed it (a cleaner of ``/tmp``, an operator): a process starting later must
hash sessions to the same files. It holds the backend weakly, so a backend nobody uses any
more is still collected, and it stops when the backend closes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from ..errors import BackendUnavailable
from ._filedir import LOCK, TMP, unavailable
from ._filevalues import VALUE, VALUES, ValueStore

__all__ = ["KEEPER", "KEEPER_JOIN", "start", "sweep"]

KEEP_EVERY = 1.0  # seconds between two checks of .secret by a live backend's keeper
KEEPER = "sessionlock-file-keeper"
KEEPER_JOIN = 2.0  # seconds close() waits for the keeper's current step
STALE_TMP = 60.0  # seconds after which a temporary file is a crash's leftover


class Kept(Protocol):
    """What the keeper asks of its backend."""

    swept: threading.Event  # set once the start sweep is over

    def sweep(self) -> int: ...

    def keep(self) -> None: ...


def start(backend: Kept, stop: threading.Event) -> threading.Thread:
    """The backend's keeper thread, started; it ends once ``stop`` is set."""
    thread = threading.Thread(
        target=_keep, args=(weakref.ref(backend), stop), name=KEEPER, daemon=True
    )
    thread.start()
    return thread


def _keep(ref: weakref.ref[Kept], stop: threading.Event) -> None:
    backend = ref()
    if backend is not None and not backend.swept.is_set():
        try:
            backend.sweep()
        except (BackendUnavailable, OSError):
            pass  # the next backend to start tries again
        finally:
            backend.swept.set()
    del backend
    while not stop.wait(KEEP_EVERY):
        backend = ref()
        if backend is None:
            return
        with contextlib.suppress(BackendUnavailable, OSError):  # a full disk: next second
            backend.keep()
        del backend


def sweep(dir_fd: int, values: ValueStore, remove_lock: Callable[[str], bool]) -> int:
    """Remove expired values, stale temporary files and the lock files nobody holds
    (``remove_lock`` locks one if free and unlinks it); returns the files removed."""
    removed = 0
    for name in _listing(dir_fd, "."):
        try:
            if name.endswith(LOCK):
                removed += remove_lock(name)
            elif name.endswith(VALUE) or (name.startswith(TMP) and _stale(dir_fd, name)):
                os.unlink(name, dir_fd=dir_fd)  # a value of the old flat layout, or
                removed += 1  # a crash's leftover
        except FileNotFoundError:
            continue
    removed += values.sweep(_listing(dir_fd, VALUES))
    return removed


def _listing(dir_fd: int, directory: str) -> list[str]:
    # A directory stream of its own: the backend's descriptor shares its read offset with
    # every fork of this process (a gunicorn master's workers) and every thread.
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        listing = os.open(directory, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unavailable(exc) from exc
    try:
        return os.listdir(listing)
    finally:
        os.close(listing)


def _stale(dir_fd: int, name: str) -> bool:
    # ctime: a temporary file (.secret's) may be given another mtime before it is linked.
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return info.st_ctime < time.time() - STALE_TMP
