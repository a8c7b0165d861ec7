"""Apps for ``sessionlock check`` in tests/test_cli.py, imported by the command as
``tests.cli_apps:<name>``. Their backend is ``$CLI_APPS_BACKEND`` (default memory://)."""

from __future__ import annotations

import os

from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware

from sessionlock import asgi, wsgi

BACKEND = os.environ.get("CLI_APPS_BACKEND", "memory://")


def create_flask(cookie_name: str = "session", wrapped: bool = True) -> Flask:
    app = Flask(__name__)
    app.secret_key = "test"
    app.config["SESSION_COOKIE_NAME"] = cookie_name
    if wrapped:
        app.wsgi_app = wsgi.SessionLockMiddleware(app.wsgi_app, backend=BACKEND)  # type: ignore[method-assign]
    return app


flask_app = create_flask()
#: Flask's signed-cookie session renamed, the lock still tracking the default "session".
flask_untracked = create_flask(cookie_name="myapp_session")
flask_bare = create_flask(wrapped=False)

lock = Middleware(asgi.SessionLockMiddleware, backend=BACKEND)
session = Middleware(SessionMiddleware, secret_key="test")
#: The lock outside the session (listed first: outermost).
starlette_app = Starlette(middleware=[lock, session])
#: The session outside the lock: loaded before the lock, saved after it.
starlette_misordered = Starlette(middleware=[session, lock])

#: add_middleware puts each new middleware outside the ones before: the lock, added last,
#: is outermost.
fastapi_app = FastAPI()
fastapi_app.add_middleware(SessionMiddleware, secret_key="test")
fastapi_app.add_middleware(asgi.SessionLockMiddleware, backend=BACKEND)
#: An ASGI app wrapped whole.
starlette_wrapped = asgi.SessionLockMiddleware(
    Starlette(middleware=[session]), backend=BACKEND, cookie_session=None
)
