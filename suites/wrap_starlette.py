"""pytest plugin: every Starlette app the suite builds runs behind sessionlock's ASGI middleware.

``Starlette.build_middleware_stack`` is patched so the stack each app builds (on its first
call) is wrapped, outermost, as ``app.add_middleware(SessionLockMiddleware, ...)`` added last
would be, with Starlette's signed-cookie session tracked (``cookie_session="session"``).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp

from sessionlock.asgi import SessionLockMiddleware

from . import env, stats


def install(options: dict[str, Any]) -> None:
    original = Starlette.build_middleware_stack

    @functools.wraps(original)
    def build_middleware_stack(self: Starlette) -> ASGIApp:
        return SessionLockMiddleware(original(self), cookie_session="session", **options)

    Starlette.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    stats.install()
    install(env.middleware_options())
