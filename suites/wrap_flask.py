"""pytest plugin: every Flask app the suite builds runs behind sessionlock's WSGI middleware.

``Flask.__init__`` is patched so each new app's ``wsgi_app`` is wrapped the way the README
tells users to (``app.wsgi_app = SessionLockMiddleware(app.wsgi_app, ...)``), with Flask's
signed-cookie session tracked (``cookie_session="session"``).
"""

from __future__ import annotations

import functools
from typing import Any

import flask
import pytest

from sessionlock.wsgi import SessionLockMiddleware

from . import env, stats


def install(options: dict[str, Any]) -> None:
    original = flask.Flask.__init__

    @functools.wraps(original)
    def __init__(self: flask.Flask, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.wsgi_app = SessionLockMiddleware(  # type: ignore[method-assign]
            self.wsgi_app, cookie_session="session", **options
        )

    flask.Flask.__init__ = __init__  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    stats.install()
    install(env.middleware_options())
