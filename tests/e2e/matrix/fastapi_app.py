"""The FastAPI matrix app (its own module: FastAPI reads the handler's annotations at run
time, so ``Request`` must be a real name here, not a string under ``from __future__``).

Starlette's ``SessionMiddleware`` (a signed cookie named ``session``, tracked by default),
the lock outermost, ``sessionlock.starlette.SessionRulesMiddleware`` innermost.
"""

from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.sessions import SessionMiddleware

from sessionlock.asgi import SessionLockMiddleware
from sessionlock.starlette import SessionRulesMiddleware

from .asgi_apps import METHODS, operation
from .logic import RULES, SECRET, locked


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/{op}", methods=METHODS)
    async def handle(op: str, request: Request) -> dict[str, Any]:
        return await operation(op, request.session, request.query_params)

    if locked():  # added last = outermost
        app.add_middleware(SessionRulesMiddleware, rules=RULES)
    app.add_middleware(SessionMiddleware, secret_key=SECRET)
    if locked():
        app.add_middleware(SessionLockMiddleware)
    return app
