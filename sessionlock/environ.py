"""WSGI session layers that keep the session in an environ key (Beaker): rules before save.

    from beaker.middleware import SessionMiddleware
    from sessionlock.environ import SessionRulesMiddleware
    from sessionlock.rules import index_within, required
    from sessionlock.wsgi import SessionLockMiddleware

    app = SessionRulesMiddleware(app, rules=[                  # innermost: rules
        required("selected_question_type", "basic"),
        index_within("exam_current", "exam_question_ids"),
    ], environ_key="beaker.session")
    app = SessionMiddleware(app, {"session.type": "memory"})  # the session layer
    app = SessionLockMiddleware(app, backend="memory://")      # outermost: the lock

Beaker's ``SessionMiddleware`` saves the session inside the ``start_response`` it hands the
app. This middleware sits inside it and runs the rules when the app calls ``start_response``,
before passing the call on: the repaired session is the one saved (for Beaker, by marking it
dirty with ``save()``). Placed outside the session layer (no ``environ_key`` when the request
arrives) it logs an error once and does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import order
from .rules import Rule, Ruleset, as_ruleset

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["SessionRulesMiddleware"]

logger = logging.getLogger("sessionlock")


class SessionRulesMiddleware:
    def __init__(
        self,
        app: WSGIApplication,
        *,
        rules: Ruleset | Iterable[Rule],
        environ_key: str = "beaker.session",
    ) -> None:
        self.app = app
        self.rules = as_ruleset(rules)
        self.environ_key = environ_key
        self._misplaced_reported = False
        order.watch_environ_key(environ_key)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.environ_key not in environ:
            self._report_misplaced()
            return self.app(environ, start_response)
        rules, key = self.rules, self.environ_key

        def start_repaired(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            session = environ.get(key)
            if session is not None:
                report = rules.enforce(session)
                if report and rules.header is not None:
                    headers = [*headers, (rules.header, rules.header_value(report))]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_repaired)

    def _report_misplaced(self) -> None:
        if not self._misplaced_reported:
            self._misplaced_reported = True
            logger.error(
                "sessionlock.environ.SessionRulesMiddleware found no environ[%r]: place it "
                "inside the session middleware, or its rules never run",
                self.environ_key,
            )
