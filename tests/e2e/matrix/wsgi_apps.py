"""WSGI matrix apps: Flask, Bottle, Falcon, Pyramid, each on the session layer it is used with.

- Flask: its default signed-cookie session; ``sessionlock.flask.SessionLock`` (the lock
  around ``wsgi_app``, the rules as the last ``after_request``).
- Bottle and Falcon: Beaker's server-side sessions (memory), keyed by Beaker's id cookie;
  the rules by ``sessionlock.environ.SessionRulesMiddleware`` inside Beaker.
- Pyramid: ``SignedCookieSessionFactory`` (a signed cookie named ``session``, tracked by
  default); sessionlock has no Pyramid rules adapter, so a tween applies the Ruleset after
  the view, before Pyramid's response callback writes the cookie.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .logic import ROOMS, RULES, SECRET, locked, run

BEAKER_KEY = "cookie:beaker.session.id"


def flask_app() -> Any:
    import flask

    from sessionlock.flask import SessionLock

    app = flask.Flask(__name__)
    app.secret_key = SECRET

    @app.route("/<op>", methods=["GET", "POST"])
    def handle(op: str) -> Any:
        if op == "meet":
            return ROOMS.meet(flask.request.args)
        return run(op, flask.session, flask.session.clear)

    if locked():
        SessionLock(app, rules=RULES)
    return app


def _beaker(app: Any) -> Any:
    """Beaker's memory sessions around ``app``; the rules inside, the lock outside."""
    from beaker.middleware import SessionMiddleware

    from sessionlock.environ import SessionRulesMiddleware
    from sessionlock.wsgi import SessionLockMiddleware

    if locked():
        app = SessionRulesMiddleware(app, rules=RULES, environ_key="beaker.session")
    app = SessionMiddleware(app, {"session.type": "memory", "session.auto": True})
    return SessionLockMiddleware(app, key=BEAKER_KEY) if locked() else app


def _beaker_op(op: str, session: Any, query: Any) -> dict[str, Any]:
    if op == "meet":
        return ROOMS.meet(query)
    return run(op, session, session.delete)  # Beaker: gone from the store, cookie expired


def bottle_app() -> Any:
    import bottle

    app = bottle.Bottle()

    @app.route("/<op>", method=["GET", "POST"])
    def handle(op: str) -> dict[str, Any]:
        request = bottle.request
        return _beaker_op(op, request.environ["beaker.session"], request.query)

    return _beaker(app)


def falcon_app() -> Any:
    import falcon

    class Operation:
        def on_get(self, req: Any, resp: Any, op: str) -> None:
            resp.media = _beaker_op(op, req.env["beaker.session"], req.params)

        on_post = on_get

    app = falcon.App()
    app.add_route("/{op}", Operation())
    return _beaker(app)


def pyramid_app() -> Any:
    from pyramid.config import Configurator
    from pyramid.session import SignedCookieSessionFactory

    from sessionlock.wsgi import SessionLockMiddleware

    def handle(request: Any) -> dict[str, Any]:
        op = request.matchdict["op"]
        if op == "meet":
            return ROOMS.meet(request.params)
        return run(op, request.session, request.session.invalidate)

    with Configurator() as config:
        config.set_session_factory(SignedCookieSessionFactory(SECRET))
        config.add_route("op", "/{op}")
        config.add_view(handle, route_name="op", renderer="json")
        if locked():
            config.add_tween(f"{__name__}.pyramid_rules_tween")
        app = config.make_wsgi_app()
    return SessionLockMiddleware(app) if locked() else app


def pyramid_rules_tween(handler: Callable[[Any], Any], registry: Any) -> Callable[[Any], Any]:
    """The rules after the view, before the response callbacks that save the session."""

    def tween(request: Any) -> Any:
        response = handler(request)
        report = RULES.enforce(request.session)
        if report.changed:
            request.session.changed()
        if report and RULES.header is not None:
            response.headers[RULES.header] = RULES.header_value(report)
        return response

    return tween
