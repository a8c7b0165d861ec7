"""ASGI matrix apps: Starlette, FastAPI, Quart, Litestar, each on its default session layer.

- Starlette (FastAPI: fastapi_app.py): ``SessionMiddleware`` (a signed cookie named
  ``session``, tracked by default), the lock outermost,
  ``sessionlock.starlette.SessionRulesMiddleware`` inside.
- Quart: its default signed-cookie session (``session``); sessionlock has no Quart rules
  adapter, so an ``after_request`` hook enforces the Ruleset (Quart saves the session after
  its ``after_request`` functions, as Flask does).
- Litestar: ``CookieBackendConfig`` (an encrypted cookie named ``session`` while the session
  fits one cookie), the lock around the app, the Starlette rules middleware after Litestar's
  session middleware (it only needs ``scope["session"]``).
"""

from __future__ import annotations

from typing import Any

from .logic import ROOMS, RULES, SECRET, locked, run_async

METHODS = ["GET", "POST"]
LITESTAR_COOKIES = ["session", "session-0"]


async def operation(op: str, session: Any, query: Any) -> dict[str, Any]:
    if op == "meet":
        return await ROOMS.meet_async(query)
    return await run_async(op, session, session.clear)


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from sessionlock.asgi import SessionLockMiddleware
    from sessionlock.starlette import SessionRulesMiddleware

    async def handle(request: Request) -> JSONResponse:
        op = request.path_params["op"]
        return JSONResponse(await operation(op, request.session, request.query_params))

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if locked():
        middleware.insert(0, Middleware(SessionLockMiddleware))
        middleware.append(Middleware(SessionRulesMiddleware, rules=RULES))
    return Starlette(routes=[Route("/{op}", handle, methods=METHODS)], middleware=middleware)


def quart_app() -> Any:
    import quart

    from sessionlock.asgi import SessionLockMiddleware

    app = quart.Quart(__name__)
    app.secret_key = SECRET

    @app.route("/<op>", methods=METHODS)
    async def handle(op: str) -> Any:
        return await operation(op, quart.session, quart.request.args)

    if not locked():
        return app

    @app.after_request
    async def enforce_rules(response: Any) -> Any:
        report = RULES.enforce(quart.session)
        if report and RULES.header is not None:
            response.headers[RULES.header] = RULES.header_value(report)
        return response

    return SessionLockMiddleware(app)


def litestar_app() -> Any:
    from litestar import Litestar, Request, route
    from litestar.middleware.base import DefineMiddleware
    from litestar.middleware.session.client_side import CookieBackendConfig

    from sessionlock.asgi import SessionLockMiddleware
    from sessionlock.starlette import SessionRulesMiddleware

    @route("/{op:str}", http_method=METHODS, status_code=200)
    async def handle(request: Request[Any, Any, Any], op: str) -> dict[str, Any]:
        if op == "meet":
            return await ROOMS.meet_async(request.query_params)
        return await run_async(op, request.session, request.clear_session)

    sessions = CookieBackendConfig(secret=SECRET.encode()[:32])
    middleware: list[Any] = [sessions.middleware]
    if locked():
        middleware.append(DefineMiddleware(SessionRulesMiddleware, rules=RULES))
    app = Litestar(route_handlers=[handle], middleware=middleware)
    # Litestar 2.0 names a one-chunk session cookie "session-0"; later releases "session".
    return SessionLockMiddleware(app, cookie_session=LITESTAR_COOKIES) if locked() else app
