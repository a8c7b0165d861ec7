"""Starlette (and any ASGI app with ``scope["session"]``): rules run before the cookie is written.

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from sessionlock.asgi import SessionLockMiddleware
    from sessionlock.rules import index_within, required
    from sessionlock.starlette import SessionRulesMiddleware

    app = Starlette(routes=[], middleware=[                    # first = outermost
        Middleware(SessionLockMiddleware, backend="memory://"),  # lock outside the session
        Middleware(SessionMiddleware, secret_key="change me"),
        Middleware(SessionRulesMiddleware, rules=[             # rules inside it
            required("selected_question_type", "basic"),
            index_within("exam_current", "exam_question_ids"),
        ]),
    ])

``SessionMiddleware`` loads ``scope["session"]`` as the request starts and writes the cookie
when ``http.response.start`` passes through its ``send``. This middleware sits inside it and
runs the rules when the app sends ``http.response.start``, just before that message reaches
``SessionMiddleware``: the repaired session is the one written. Placed outside the session
layer (no ``scope["session"]`` when the request arrives) it logs an error once and does
nothing, since its repairs would come after the cookie was written. It takes ``rules``
only: the lock's options (``backend``, ``key``...) go to
:class:`sessionlock.asgi.SessionLockMiddleware`, and any other keyword is a
ConfigurationError naming what it takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, NoReturn

from ._types import ASGIApp, Message, Receive, Scope, Send
from .errors import ConfigurationError
from .marks import is_marked, shared
from .options import NAMES, check_names
from .rules import Rule, Ruleset, as_ruleset
from .stale import hidden_field, page_token

__all__ = ["SessionRulesMiddleware", "add_template_globals", "marked_routes", "shared"]


def marked_routes(routes: Sequence[Any]) -> Callable[[Scope], bool]:
    """The ``shared`` option for the routes whose endpoint is marked :func:`shared`: the
    route a request will reach, found as the router will (``routes`` may grow later:
    ``app.routes`` is read at each request). Mounted apps are looked into."""
    from starlette.routing import Match

    def reaches_marked(scope: Scope, routes: Sequence[Any]) -> bool:
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.NONE:
                continue
            if match is Match.PARTIAL:  # the path, not the method: no route serves it here
                continue
            inner = getattr(route, "routes", None)
            if inner is not None:  # a Mount: the rest of the path is its routes'
                return reaches_marked({**scope, **child}, inner)
            return is_marked(getattr(route, "endpoint", None))
        return False

    def is_shared(scope: Scope) -> bool:
        return scope.get("type") == "http" and reaches_marked(scope, routes)

    return is_shared


logger = logging.getLogger("sessionlock")


class SessionRulesMiddleware:
    # ``unknown``: a keyword it does not take, refused by name at run time (and by a type
    # checker, since no value is a NoReturn).
    def __init__(
        self, app: ASGIApp, *, rules: Ruleset | Iterable[Rule], **unknown: NoReturn
    ) -> None:
        if unknown:
            _refuse(unknown)
        self.app = app
        self.rules = as_ruleset(rules)
        self._misplaced_reported = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "session" not in scope:
            self._report_misplaced()
            await self.app(scope, receive, send)
            return
        rules = self.rules

        async def send_repaired(message: Message) -> None:
            if message["type"] == "http.response.start":
                session = scope.get("session")
                # A mapping only: after Litestar's clear_session() it is a sentinel object.
                if isinstance(session, MutableMapping):
                    report = rules.enforce(session)
                    if report and rules.header is not None:
                        value = rules.header_value(report)
                        message["headers"] = [
                            *message.get("headers", ()),
                            (rules.header.lower().encode("latin-1"), value.encode("latin-1")),
                        ]
            await send(message)

        await self.app(scope, receive, send_repaired)

    def _report_misplaced(self) -> None:
        if not self._misplaced_reported:
            self._misplaced_reported = True
            logger.error(
                "SessionRulesMiddleware found no scope['session']: place it inside "
                "SessionMiddleware (listed after it), or its rules never run"
            )


def _refuse(unknown: Mapping[str, object]) -> None:
    lock_options = sorted(set(unknown) & set(NAMES))
    if lock_options:
        named = " and ".join(map(repr, lock_options))
        are = "is an option" if len(lock_options) == 1 else "are options"
        raise ConfigurationError(
            f"SessionRulesMiddleware takes only rules; {named} {are} of the lock, "
            "sessionlock.asgi.SessionLockMiddleware, listed before SessionMiddleware"
        )
    check_names(unknown, "SessionRulesMiddleware", known=("rules",))


def add_template_globals(env: Any) -> None:
    """Give a Jinja2 environment (``Jinja2Templates(...).env``) Flask's two stale-page
    globals: ``session_revision_field()`` and ``session_revision()``, which read ``request``
    from the template's context (``TemplateResponse`` puts it there)."""
    from jinja2 import pass_context
    from markupsafe import Markup

    @pass_context
    def session_revision_field(context: Any) -> Markup:
        # Digits, a dot and hex in a fixed tag: nothing to escape.
        return Markup(hidden_field(context.get("request")))  # noqa: S704

    @pass_context
    def session_revision(context: Any) -> str:
        return page_token(context.get("request")) or ""

    env.globals.update(
        session_revision_field=session_revision_field, session_revision=session_revision
    )
