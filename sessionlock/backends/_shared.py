"""The process-wide registry behind :func:`sessionlock.backends.from_url`: one backend per URL.

Every middleware naming a URL gets the same backend, so a process opens a directory (or a
connection pool) once, however many middleware instances it builds (one per test, per app,
per settings override). A backend leaves the registry when it is closed
(:meth:`Backend.close`), and :func:`close_all` closes every one. A fork keeps the registry:
the child goes on with the parent's backends, each of which resets what must not be shared
(the file backend drops the locks and descriptors it inherited).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["close_all", "forget", "registered", "shared"]

# Reentrant: a backend being built may itself ask for another URL.
_lock = threading.RLock()
_backends: dict[str, Backend] = {}


def shared(url: str, make: Callable[[], Backend]) -> Backend:
    """The backend registered under the normalized ``url``, made (once) if there is none."""
    with _lock:
        backend = _backends.get(url)
        if backend is None:
            backend = _backends[url] = make()
        return backend


def forget(backend: Backend) -> None:
    """Take ``backend`` out of the registry (closing it is the caller's business)."""
    with _lock:
        for url in [url for url, known in _backends.items() if known is backend]:
            del _backends[url]


def registered() -> dict[str, Backend]:
    """A copy of the registry: normalized URL -> backend (for tests and diagnostics)."""
    with _lock:
        return dict(_backends)


def close_all() -> int:
    """Close every backend made by ``from_url`` in this process; returns how many.

    For the end of a process or of a test suite: a middleware still holding one of them
    gets :class:`~sessionlock.errors.BackendUnavailable` (a 503) from then on, while a
    middleware built afterwards gets a fresh backend.
    """
    with _lock:
        backends = list({id(b): b for b in _backends.values()}.values())
        _backends.clear()
    for backend in backends:
        backend.close()
    return len(backends)


def _after_fork_in_child() -> None:
    # Only the forking thread survives: a lock another thread held would never be released.
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows (docs/platforms.md)
    os.register_at_fork(after_in_child=_after_fork_in_child)
