"""Misorder detection: a lock placed inside the session layer is reported at its first request.

    from sessionlock import order
    order.session_layer_outside({"type": "http", "session": {}})   # -> "scope['session']"

The lock must be taken before the session is loaded and released after it is saved. A
session layer *outside* the lock (Starlette's ``SessionMiddleware`` added after the lock
middleware, Beaker's ``SessionMiddleware`` wrapping it, Django's ``SessionMiddleware`` listed
before the lock) has loaded the session before the lease, and saves it after the release:
the lock then protects nothing. The lock middleware calls :func:`check` under the lease;
the first misordered request of each middleware logs an error on the ``sessionlock`` logger.
"""

from __future__ import annotations

import logging
import weakref

from ._types import Request

__all__ = ["check", "session_layer_outside", "watch_environ_key"]

logger = logging.getLogger("sessionlock")

# Environ keys where WSGI session layers put their session; the environ rules adapter
# registers the key it is configured with.
_ENVIRON_KEYS: set[str] = {"beaker.session"}
_reported: weakref.WeakSet[object] = weakref.WeakSet()


def watch_environ_key(key: str) -> None:
    """Treat ``environ[key]`` as the mark of a session layer outside the lock."""
    _ENVIRON_KEYS.add(key)


def session_layer_outside(request: Request) -> str | None:
    """Where a session already sits in the environ or scope, or None when none does."""
    if "REQUEST_METHOD" in request:  # WSGI environ
        for key in _ENVIRON_KEYS:
            if key in request:
                return f"environ[{key!r}]"
        return None
    return "scope['session']" if "session" in request else None


def check(owner: object, request: Request) -> None:
    """Log an error, once per ``owner`` (the lock's core), if a session layer is outside it.

    The request is looked at first: a well-ordered one (every request, in a working setup)
    costs no weak reference, which a lookup in the set of reported owners would allocate.
    """
    found = session_layer_outside(request)
    if found is not None and owner not in _reported:
        _reported.add(owner)
        logger.error(
            "session lock is inside the session layer (%s exists when the lock is taken): "
            "the session is loaded before the lock and saved after its release, so "
            "concurrent updates can still be lost; move the lock middleware outside it",
            found,
            extra={"sessionlock_misordered": found},
        )
