"""Every Django handler the suite builds lists ``sessionlock.django.SessionLockMiddleware`` first.

``BaseHandler.load_middleware`` reads ``settings.MIDDLEWARE`` through the ``settings`` name of
its own module; that name is pointed at a view of the real settings whose MIDDLEWARE starts
with the lock. Everything else, ``override_settings`` included, reads through unchanged, so
each test's own MIDDLEWARE is kept, behind the lock, exactly as a project listing it first.
The lock's options come from the ``SESSIONLOCK`` setting (see suites.django_settings).
"""

from __future__ import annotations

from typing import Any

LOCK = "sessionlock.django.SessionLockMiddleware"


class LockFirst:
    """``django.conf.settings`` as load_middleware sees it: the lock first in MIDDLEWARE."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._settings, name)
        if name == "MIDDLEWARE" and LOCK not in value:
            return [LOCK, *value]
        return value


def install() -> None:
    """Idempotent: the handlers' module sees the lock first from now on."""
    from django.core.handlers import base  # type: ignore[import-untyped]

    if not isinstance(base.settings, LockFirst):
        base.settings = LockFirst(base.settings)
