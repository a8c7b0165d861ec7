"""Counter apps with each framework's default session, wrapped by README snippets, for servers.

    SL_README_CASE=use_flask SL_README_MODE=wrapped \\
        gunicorn -k gthread --threads 16 'tests.e2e.readme_apps:build()'
    SL_README_CASE=use_starlette uvicorn --factory tests.e2e.readme_apps:build

Every app has ``GET /state`` (the landing page: writes ``seen`` to the session, answers
``{"n": n}``) and ``POST /incr`` (reads ``n``, works ``SL_README_WORK`` seconds, default 0.02,
then writes ``n + 1``): concurrent increments that read the same old session lose updates.

``build()`` makes the app of ``SL_README_CASE`` (a function below) and runs the README's own
statements on it, read from their page now (:mod:`tests.e2e.readme`). SL_README_MODE
``control`` runs the same statements minus those that name ``SessionLock`` (the wrapping),
so the control is the same app, unwrapped. SL_README_TMP: where ``/var/lib/...`` paths of a
snippet go. Each framework keeps its default session: Flask's and Quart's signed cookie,
Starlette's ``SessionMiddleware``, Pyramid's ``SignedCookieSessionFactory``, Django's
database sessions (:mod:`tests.e2e.readme_django`), Beaker's memory sessions.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from . import readme
from .readme import Ref

SECRET = "readme-e2e-secret-0123456789abcdef"


def _work() -> float:
    return float(os.environ.get("SL_README_WORK", readme.WORK))


def _control() -> bool:
    mode = os.environ.get("SL_README_MODE", "wrapped")
    if mode not in ("wrapped", "control"):
        raise ValueError(f"SL_README_MODE must be wrapped or control, not {mode!r}")
    return mode == "control"


def snippet(parts: list[tuple[Ref, str]], namespace: dict[str, Any]) -> Any:
    """Run the README statements ``parts`` (block, substring) in order; the last value."""
    sources = [readme.statement(ref, contains) for ref, contains in parts]
    return run_source("\n".join(sources), namespace)


def run_source(source: str, namespace: dict[str, Any]) -> Any:
    if _control():
        kept = [s for s in readme.statements(source) if "SessionLock" not in s]
        source = "\n".join(kept) + "\n"
    return readme.run(
        readme.localize(source, os.environ.get("SL_README_TMP", "/nonexistent")), namespace
    )


# -- the counters -----------------------------------------------------------------------------


def add_flask_routes(app: Any) -> Any:
    import flask

    work = _work()

    def state() -> Any:
        flask.session["seen"] = True
        return {"n": flask.session.get("n", 0)}

    def incr() -> Any:
        n = flask.session.get("n", 0)
        time.sleep(work)
        flask.session["n"] = n + 1
        return {"n": n + 1}

    app.add_url_rule("/state", "readme_state", state, methods=["GET"])
    app.add_url_rule("/incr", "readme_incr", incr, methods=["POST"])
    return app


def flask_counter() -> Any:
    import flask

    app = flask.Flask(__name__)
    app.secret_key = SECRET
    return add_flask_routes(app)


def starlette_routes() -> list[Any]:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    work = _work()

    async def state(request: Request) -> JSONResponse:
        request.session["seen"] = True
        return JSONResponse({"n": request.session.get("n", 0)})

    async def incr(request: Request) -> JSONResponse:
        n = request.session.get("n", 0)
        await asyncio.sleep(work)
        request.session["n"] = n + 1
        return JSONResponse({"n": n + 1})

    return [Route("/state", state), Route("/incr", incr, methods=["POST"])]


def starlette_counter(session: str | None = "session") -> Any:
    """Starlette with its SessionMiddleware under cookie ``session`` (None: not yet added)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware

    middleware = []
    if session is not None:
        middleware.append(Middleware(SessionMiddleware, secret_key=SECRET, session_cookie=session))
    return Starlette(routes=starlette_routes(), middleware=middleware)


def fastapi_counter() -> Any:
    from fastapi import FastAPI, Request

    app = FastAPI()
    work = _work()

    async def state(request: Request) -> dict[str, int]:
        request.session["seen"] = True
        return {"n": request.session.get("n", 0)}

    async def incr(request: Request) -> dict[str, int]:
        n = request.session.get("n", 0)
        await asyncio.sleep(work)
        request.session["n"] = n + 1
        return {"n": n + 1}

    for handler in (state, incr):  # annotations are strings here: FastAPI needs the class
        handler.__annotations__["request"] = Request
    app.add_api_route("/state", state, methods=["GET"])
    app.add_api_route("/incr", incr, methods=["POST"])
    return app


def quart_counter() -> Any:
    import quart

    app = quart.Quart(__name__)
    app.secret_key = SECRET
    work = _work()

    @app.get("/state")
    async def state() -> dict[str, int]:
        quart.session["seen"] = True
        return {"n": quart.session.get("n", 0)}

    @app.post("/incr")
    async def incr() -> dict[str, int]:
        n = quart.session.get("n", 0)
        await asyncio.sleep(work)
        quart.session["n"] = n + 1
        return {"n": n + 1}

    return app


def pyramid_counter() -> Any:
    from pyramid.config import Configurator
    from pyramid.session import SignedCookieSessionFactory

    work = _work()

    def state(request: Any) -> dict[str, int]:
        request.session["seen"] = True
        return {"n": request.session.get("n", 0)}

    def incr(request: Any) -> dict[str, int]:
        n = request.session.get("n", 0)
        time.sleep(work)
        request.session["n"] = n + 1
        return {"n": n + 1}

    with Configurator() as config:
        config.set_session_factory(SignedCookieSessionFactory(SECRET))
        config.add_route("state", "/state")
        config.add_view(state, route_name="state", renderer="json")
        config.add_route("incr", "/incr")
        config.add_view(incr, route_name="incr", renderer="json", request_method="POST")
        return config.make_wsgi_app()


def beaker_counter(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app over Beaker's session (``environ["beaker.session"]``)."""
    import json

    session = environ["beaker.session"]
    if environ["PATH_INFO"] == "/incr":
        n = session.get("n", 0)
        time.sleep(_work())
        session["n"] = n = n + 1
    else:
        session["seen"] = True
        n = session.get("n", 0)
    session.save()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"n": n}).encode()]


def django_application() -> Any:
    """Django's WSGI app (DJANGO_SETTINGS_MODULE=tests.e2e.readme_django: db sessions)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.readme_django")
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# -- the cases --------------------------------------------------------------------------------

PYRAMID_FALLBACK = "app = SessionLockMiddleware(app)"


def pyramid_statement() -> str | None:
    """The WSGI Use block's Pyramid line, if the README has one (it names Pyramid above it)."""
    found = [s for s in readme.statements(readme.find(readme.USE_WSGI).source) if "Pyramid" in s]
    return found[0] if found else None


def use_flask() -> Any:
    app = flask_counter()
    snippet([(readme.USE_WSGI, "import"), (readme.USE_WSGI, "# Flask")], {"app": app})
    return app


def use_django() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.readme_django")
    from django.core.wsgi import get_wsgi_application

    namespace: dict[str, Any] = {"get_wsgi_application": get_wsgi_application}
    snippet([(readme.USE_WSGI, "import"), (readme.USE_WSGI, "# Django")], namespace)
    return namespace.get("application") or get_wsgi_application()


def use_pyramid() -> Any:
    namespace: dict[str, Any] = {"app": pyramid_counter()}
    line = pyramid_statement() or PYRAMID_FALLBACK
    import_line = readme.statement(readme.USE_WSGI, "import")
    run_source(f"{import_line}\n{line}\n", namespace)
    return namespace["app"]


def use_starlette() -> Any:
    return _asgi_use_with(starlette_counter(session=None))


def use_fastapi() -> Any:
    return _asgi_use_with(fastapi_counter())


def _asgi_use_with(app: Any) -> Any:
    from starlette.middleware.sessions import SessionMiddleware

    parts = [(readme.USE_ASGI, "import"), (readme.USE_ASGI, "SessionMiddleware,")]
    parts.append((readme.USE_ASGI, "add_middleware(SessionLockMiddleware)"))
    snippet(parts, {"app": app, "SessionMiddleware": SessionMiddleware})
    return app


def use_quart() -> Any:
    namespace: dict[str, Any] = {"quart_app": quart_counter()}
    parts = [(readme.USE_ASGI, "import"), (readme.USE_ANY_ASGI, "quart_app")]
    snippet(parts, namespace)
    return namespace.get("app", namespace["quart_app"])


def cookie_flask() -> Any:
    app = flask_counter()
    parts = [(readme.COOKIE, "sessionlock.wsgi import"), (readme.COOKIE, "# Flask")]
    snippet(parts, {"app": app})
    return app


def cookie_starlette() -> Any:
    from starlette.middleware.sessions import SessionMiddleware

    app = starlette_counter(session=None)
    parts = [(readme.COOKIE, "sessionlock.asgi import"), (readme.COOKIE, "SessionMiddleware,")]
    parts.append((readme.COOKIE, "# Starlette"))
    snippet(parts, {"app": app, "SessionMiddleware": SessionMiddleware})
    return app


def cookie_my_session() -> Any:
    app = starlette_counter(session="my_session")
    parts = [(readme.COOKIE, "sessionlock.asgi import"), (readme.COOKIE, '"my_session"')]
    return snippet(parts, {"app": app}) or app


def cookie_none() -> Any:
    app = starlette_counter(session="session")
    parts = [(readme.COOKIE, "sessionlock.asgi import"), (readme.COOKIE, "cookie_session=None")]
    return snippet(parts, {"app": app}) or app


def file_backend() -> Any:
    namespace: dict[str, Any] = {"app": django_application()}
    snippet([(readme.FILE_BACKEND, "import"), (readme.FILE_BACKEND, "app = ")], namespace)
    return namespace["app"]


def redis_app() -> Any:
    """The Several hosts block, its Redis host moved to the test's redis-server."""
    block = readme.find(readme.REDIS_APP).source
    source = block.replace("redis://redis.internal:6379/0", os.environ["SL_README_REDIS"])
    namespace: dict[str, Any] = {"app": django_application()}
    run_source(source, namespace)
    return namespace["app"]


def flask_ext() -> Any:
    namespace: dict[str, Any] = {"__name__": "readme_flask_extension"}
    run_source(readme.find(readme.FLASK_EXT).source, namespace)
    return add_flask_routes(namespace["app"])


def starlette_rules() -> Any:
    namespace: dict[str, Any] = {}
    readme.run(readme.find(readme.STARLETTE_RULES).source, namespace)
    app = namespace["app"]
    if _control():  # the same stack without its first layer, the lock
        kept = [m for m in app.user_middleware if m.cls.__name__ != "SessionLockMiddleware"]
        assert len(kept) == len(app.user_middleware) - 1
        app.user_middleware = kept
    app.router.routes.extend(starlette_routes())
    return app


def beaker() -> Any:
    """The Beaker block around a counter: its ``def app`` replaced by :func:`beaker_counter`."""
    kept = readme.statements(readme.find(readme.BEAKER).source)
    wrapping = [s for s in kept if not s.startswith("def app(")]
    assert len(wrapping) == len(kept) - 1, "the Beaker block's app is no longer `def app(`"
    namespace: dict[str, Any] = {"app": beaker_counter}
    run_source("\n".join(wrapping) + "\n", namespace)
    return namespace["app"]


def quick_flask() -> Any:
    """Flask's quickstart, a whole app: the counter's routes added beside its own."""
    namespace: dict[str, Any] = {"__name__": "readme_quick_flask"}
    run_source(readme.find(readme.QUICK_FLASK).source, namespace)
    return add_flask_routes(namespace["app"])


def quick_fastapi() -> Any:
    """FastAPI's quickstart, a whole app: the counter's routes added beside its own."""
    namespace: dict[str, Any] = {}
    run_source(readme.find(readme.QUICK_FASTAPI).source, namespace)
    namespace["app"].router.routes.extend(starlette_routes())
    return namespace["app"]


def quick_django() -> Any:
    """Django's quickstart, a whole wsgi.py (its settings: DJANGO_SETTINGS_MODULE, set)."""
    namespace: dict[str, Any] = {}
    run_source(readme.find(readme.QUICK_DJANGO).source, namespace)
    return namespace.get("application") or django_application()  # control: no wrapping


def django_settings() -> Any:
    """Django configured by the README's settings block (SL_README_DJANGO=block)."""
    os.environ["SL_README_DJANGO"] = "block"
    return django_application()


CASES: dict[str, Callable[[], Any]] = {
    f.__name__: f
    for f in (
        use_flask,
        use_django,
        use_pyramid,
        use_starlette,
        use_fastapi,
        use_quart,
        cookie_flask,
        cookie_starlette,
        cookie_my_session,
        cookie_none,
        file_backend,
        redis_app,
        flask_ext,
        starlette_rules,
        beaker,
        django_settings,
        quick_flask,
        quick_fastapi,
        quick_django,
    )
}


def build() -> Any:
    """The app of SL_README_CASE (a server's factory)."""
    return CASES[os.environ["SL_README_CASE"]]()
