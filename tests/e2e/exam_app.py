"""The seed's exam-practice app, on Flask, Starlette and Django, with its session rules.

    from tests.e2e.exam_app import flask_app, EXAM_RULES
    app = flask_app(rules=EXAM_RULES)      # SessionLock + rules; rules=None: the bare app

The session keys are the seed's: ``exam_question_ids`` (list), ``exam_current`` (index),
``selected_question_type``, ``exam_category``, ``s_type``, ``s_current``, ``s_start``,
``progress_tracking`` ({current_question, total_questions, last_answered_qid, timestamp}).
Its "next" handler advances ``exam_current`` without a bound check, as the seed's did:
that is how "question 11 of 10" happened. The rules below are the seed's proposals
(required keys, the index clamped, defaults filled) declared once and run by each adapter.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import Any

from sessionlock.rules import Ruleset, index_within, one_of, required, rule, type_of

QUESTION_TYPES = ("basic", "specialist")
SECRET = "exam-app-test-secret-0123456789abcdef"


def _progress_detect(session: MutableMapping[str, Any]) -> str | None:
    progress = session.get("progress_tracking")
    if progress is None:
        return None
    ids = session.get("exam_question_ids")
    total = len(ids) if isinstance(ids, list) else 0
    if not isinstance(progress, dict):
        return "progress_tracking is not a mapping"
    if progress.get("current_question") != session.get("exam_current", 0):
        return "progress_tracking disagrees with exam_current"
    if progress.get("total_questions") != total:
        return "progress_tracking disagrees with exam_question_ids"
    return None


def _progress_repair(session: MutableMapping[str, Any]) -> None:
    progress = session.get("progress_tracking")
    if not isinstance(progress, dict):
        progress = session["progress_tracking"] = {}
    ids = session.get("exam_question_ids")
    # In place, as app code does: the adapter still sees the change (deep comparison).
    progress["current_question"] = session.get("exam_current", 0)
    progress["total_questions"] = len(ids) if isinstance(ids, list) else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def exam_rules(**options: Any) -> Ruleset:
    """The exam app's invariants, types first so the index rule sees a list and an int."""
    return Ruleset(
        [
            type_of("exam_question_ids", list, default=list),
            required("exam_current", 0),
            type_of("exam_current", int, default=0),
            index_within("exam_current", "exam_question_ids"),
            required("selected_question_type", "basic"),
            one_of("selected_question_type", QUESTION_TYPES, default="basic"),
            required("s_start", lambda: int(time.time())),
            rule(name="progress_tracking", detect=_progress_detect, repair=_progress_repair),
        ],
        **options,
    )


EXAM_RULES = exam_rules(header="X-Session-Repaired")


# -- the app's logic, framework-neutral --------------------------------------------------


def start_exam(session: MutableMapping[str, Any], count: int) -> None:
    ids = list(range(101, 101 + count))
    session["exam_question_ids"] = ids
    session["exam_current"] = 0
    session["selected_question_type"] = "basic"
    session["exam_category"] = "basic-subjects"
    if "s_type" not in session:
        session["s_type"] = "basic"
    if "s_current" not in session:
        session["s_current"] = 0
    if "s_start" not in session:
        session["s_start"] = int(time.time())
    session["progress_tracking"] = {
        "current_question": 0,
        "total_questions": len(ids),
        "last_answered_qid": None,
        "timestamp": _now(),
    }


def next_question(session: MutableMapping[str, Any]) -> None:
    """The seed's "next" button: no bound check (the bug the rules catch)."""
    current = session.get("exam_current", 0) + 1
    ids = session.get("exam_question_ids", [])
    session["exam_current"] = current
    session["progress_tracking"] = {
        "current_question": current,
        "total_questions": len(ids),
        "last_answered_qid": ids[current - 1] if 0 < current <= len(ids) else None,
        "timestamp": _now(),
    }


def corrupt(session: MutableMapping[str, Any]) -> None:
    """What the seed saw: the index past the end, the type missing."""
    session["exam_current"] = len(session.get("exam_question_ids", [])) + 3
    session.pop("selected_question_type", None)


def show(session: MutableMapping[str, Any]) -> str:
    ids = session.get("exam_question_ids", [])
    return f"question {session.get('exam_current', 0) + 1} of {len(ids)}"


# -- Flask -------------------------------------------------------------------------------


def flask_app(*, rules: Ruleset | None = EXAM_RULES, **options: Any) -> Any:
    """The exam app on Flask's default signed-cookie session; ``rules=None``: no SessionLock."""
    from flask import Flask, session

    from sessionlock.flask import SessionLock

    app = Flask("exam_app")
    app.secret_key = SECRET

    @app.post("/start/<int:count>")
    def start(count: int) -> str:
        start_exam(session, count)
        return show(session)

    @app.post("/next")
    def next_() -> str:
        next_question(session)
        return show(session)

    @app.post("/corrupt")
    def corrupt_() -> str:
        corrupt(session)
        return show(session)

    @app.get("/question")
    def question() -> str:
        return show(session)

    if rules is not None:
        options.setdefault("backend", "memory://")
        SessionLock(app, rules=rules, **options)
    return app


# -- Starlette ---------------------------------------------------------------------------


def starlette_app(*, rules: Ruleset | None = EXAM_RULES, **options: Any) -> Any:
    """The exam app on Starlette's SessionMiddleware; the lock outside, the rules inside."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionlock.asgi import SessionLockMiddleware
    from sessionlock.starlette import SessionRulesMiddleware

    async def start(request: Request) -> PlainTextResponse:
        start_exam(request.session, int(request.path_params["count"]))
        return PlainTextResponse(show(request.session))

    async def next_(request: Request) -> PlainTextResponse:
        next_question(request.session)
        return PlainTextResponse(show(request.session))

    async def corrupt_(request: Request) -> PlainTextResponse:
        corrupt(request.session)
        return PlainTextResponse(show(request.session))

    async def question(request: Request) -> PlainTextResponse:
        return PlainTextResponse(show(request.session))

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    if rules is not None:
        options.setdefault("backend", "memory://")
        middleware.insert(0, Middleware(SessionLockMiddleware, **options))
        middleware.append(Middleware(SessionRulesMiddleware, rules=rules))
    routes = [
        Route("/start/{count:int}", start, methods=["POST"]),
        Route("/next", next_, methods=["POST"]),
        Route("/corrupt", corrupt_, methods=["POST"]),
        Route("/question", question),
    ]
    return Starlette(routes=routes, middleware=middleware)


def flask_app_unguarded() -> Any:
    """The control: the same app without SessionLock or rules."""
    return flask_app(rules=None)


def starlette_app_unguarded() -> Any:
    return starlette_app(rules=None)
