"""Flask: the session lock around the app, and the app's rules run before the session is saved.

    from flask import Flask
    from sessionlock.flask import SessionLock
    from sessionlock.rules import index_within, required

    app = Flask(__name__)
    app.secret_key = "change me"
    SessionLock(app, rules=[
        required("selected_question_type", "basic"),
        index_within("exam_current", "exam_question_ids"),
    ], backend="memory://")

    # or, with an app factory:
    lock = SessionLock(rules=[...], backend="file:///var/lib/app/locks")
    lock.init_app(app)

``app.wsgi_app`` is wrapped with :class:`sessionlock.wsgi.SessionLockMiddleware`, which sits
outside Flask's session handling: the lock is taken before Flask opens the session and
released when the response's status and headers go out, after Flask saved the session. The
rules run as the *last* ``after_request`` function: Flask's ``process_response`` calls every
``after_request`` function and only then ``save_session``, so a repair is in the cookie (or
server-side store) that goes out.
With ``stale_pages=StalePages(...)`` templates get two globals, ``session_revision_field()``
(the hidden form field that dates a page, see :mod:`sessionlock.stale`) and
``session_revision()`` (its token, for a ``Session-Revision`` header from fetch), and a
request whose ``session.modified`` is set counts as a change of the session (Flask-Session's
server-side sessions included), checked after every ``after_request`` function.
A view decorated with :func:`shared` holds its session shared (side by side with the
session's other readers; see the ``shared`` option), on top of what ``shared=...`` names; a
request of it that modifies the session anyway is reported (WARNING, naming the endpoint).
Middleware options: every one of :class:`sessionlock.wsgi.SessionLockMiddleware`'s
(:data:`sessionlock.options.NAMES`); an unknown name is a ConfigurationError when
``SessionLock(...)`` is made, naming the known ones. Removing ``SessionLock(...)`` undoes
everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, request
from flask.globals import request_ctx
from markupsafe import Markup

from .core import SHARED
from .marks import predicate, shared
from .options import NAMES, check_names
from .rules import Rule, Ruleset, as_ruleset
from .stale import hidden_field, page_token, session_changed
from .wsgi import SessionLockMiddleware

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .core import Options

__all__ = ["SessionLock", "shared"]

logger = logging.getLogger("sessionlock")


class SessionLock:
    """A Flask extension: ``SessionLock(app, rules=..., **options)`` or ``init_app(app)``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        rules: Ruleset | Iterable[Rule] = (),
        **options: Unpack[Options],
    ) -> None:
        check_names(options, "SessionLock", known=(*NAMES, "rules"))
        self.rules = as_ruleset(rules)
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` with the lock and register the rules (once per app)."""
        if "sessionlock" in app.extensions:
            raise RuntimeError("SessionLock is already initialised on this app")
        options = dict(self.options)
        options["shared"] = _shared_for(app, options.get("shared"))
        middleware = SessionLockMiddleware(app.wsgi_app, **options)  # type: ignore[arg-type]
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["sessionlock"] = middleware
        if self.rules.rules:
            # after_request functions run in reverse order of registration: the first one
            # registered runs last, after every function of the app and its blueprints.
            app.after_request_funcs.setdefault(None, []).insert(0, self._enforce)
        app.after_request_funcs.setdefault(None, []).insert(0, _check_shared_write)
        if middleware.core.revisions is not None:
            app.after_request_funcs.setdefault(None, []).insert(0, _note_change)  # after rules
            app.jinja_env.globals.update(
                session_revision_field=_revision_field, session_revision=_revision_token
            )

    def _enforce(self, response: Response) -> Response:
        ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
        # Flask >= 3.1 keeps the session in ``_session`` and marks it accessed (adding
        # ``Vary: Cookie``) whenever ``ctx.session`` is read: peek without reading.
        current = getattr(ctx, "_session", None)
        if current is None:
            current = ctx.session
        if current_app.session_interface.is_null_session(current):
            return response  # no secret key: no session to repair
        report = self.rules.enforce(current)
        if report and self.rules.header is not None:
            response.headers[self.rules.header] = self.rules.header_value(report)
        return response


def _note_change(response: Response) -> Response:
    ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
    current = getattr(ctx, "_session", None)  # as in _enforce: never marks it accessed
    if current is None:
        current = ctx.session
    if getattr(current, "modified", False):
        session_changed(request.environ)
    return response


def _revision_field() -> Markup:
    # Digits, a dot and hex in a fixed tag: nothing to escape.
    return Markup(hidden_field(request.environ))  # noqa: S704


def _revision_token() -> str:
    return page_token(request.environ) or ""


def _shared_for(app: Flask, option: Any) -> Callable[[Any], bool]:
    def view_of(environ: Any) -> object:
        try:  # the view this request will reach, found as Flask will find it
            endpoint, _ = app.url_map.bind_to_environ(environ).match(
                method=environ.get("REQUEST_METHOD")
            )
        except Exception:  # no route (404, 405, a redirect): no view
            return None
        return app.view_functions.get(endpoint)

    return predicate(option, view_of)


def _check_shared_write(response: Response) -> Response:
    if request.environ.get(SHARED):
        ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
        current = getattr(ctx, "_session", None)  # as in _enforce: never marks it accessed
        if current is None:
            current = ctx.session
        if getattr(current, "modified", False):
            logger.warning(
                "the shared request of endpoint %r modified the session: a shared request's "
                "change is not saved by a cookie session, and races a writer's in a "
                "server-side one; mark the view exclusive",
                request.endpoint,
            )
    return response
