"""The seed's exam-practice app, on Flask, Starlette and Django, with its session rules.

    from tests.e2e.exam_app import flask_app, EXAM_RULES
    app = flask_app(rules=EXAM_RULES)      # SessionLock + rules; rules=None: the bare app

The session keys are the seed's: ``exam_question_ids`` (list), ``exam_current`` (index),
``selected_question_type``, ``exam_category``, ``s_type``, ``s_current``, ``s_start``,
``progress_tracking`` ({current_question, total_questions, last_answered_qid, timestamp}).
Its "next" handler advances ``exam_current`` without a bound check, as the seed's did:
that is how "question 11 of 10" happened. The rules below are the seed's proposals
(required keys, the index clamped, defaults filled) declared once and run by each adapter.

The Flask app also has the seed's pages (issue 14, stale pages): ``GET /exam`` shows the
current question with an answer form (``POST /answer``, which embeds the session revision)
and a "next" button (``POST /exam/next``); ``GET /answers`` reads the recorded answers. As
the seed's app did, ``/answer`` trusts the session, not the page: the answer goes to the
session's current question, whatever question the page showed.

    app = flask_app_stale_pages(policy="redirect", redirect_to="/exam")  # StalePages(...)
    app = flask_app_stale_pages(bare=True)                               # the control

The same pages on a server-side session (the session in the server's memory, keyed by an
``sid`` cookie set once and never changed, as Flask-Session or Django's database sessions
do), the lock keyed by that cookie:

    app = flask_app_stale_pages_server_side()                            # StalePages()
    app = flask_app_stale_pages_server_side(strip_eviction_cookie=True)  # the control
"""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sessionlock
from sessionlock.rules import Ruleset, index_within, one_of, required, rule, type_of

if TYPE_CHECKING:
    from flask import Flask

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


def current_qid(session: MutableMapping[str, Any]) -> int | None:
    """The id of the session's current question; None before the start or past the end."""
    ids = session.get("exam_question_ids", [])
    current = session.get("exam_current", 0)
    return ids[current] if isinstance(ids, list) and 0 <= current < len(ids) else None


def record_answer(session: MutableMapping[str, Any], answer: str) -> None:
    """The seed's answer handler: the answer goes to the session's current question."""
    qid = current_qid(session)
    if qid is None:
        return
    session["exam_answers"] = {**session.get("exam_answers", {}), str(qid): answer}
    progress = session.get("progress_tracking")
    if isinstance(progress, dict):
        session["progress_tracking"] = {**progress, "last_answered_qid": qid, "timestamp": _now()}


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

    _exam_pages(app)
    if rules is not None:
        options.setdefault("backend", "memory://")
        SessionLock(app, rules=rules, **options)
    else:  # the bare app: the page's field is empty, as without the middleware
        app.add_template_global(lambda: "", "session_revision_field")
        app.add_template_global(lambda: "", "session_revision")
    return app


EXAM_QUESTIONS = 5
_RENDERS = itertools.count(1)  # a page restored from a cache keeps its render number

_EXAM_PAGE = """<!doctype html>
<html><head><title>Exam</title></head><body>
{% if qid is none %}
<form method="post" action="/exam/start/{{ count }}">
<button id="start" type="submit">start</button></form>
{% else %}
{% if stale %}<p id="stale">That page was out of date: nothing was recorded.</p>{% endif %}
<p id="label">Question {{ shown }} of {{ total }}</p>
<p>Question id <span id="qid">{{ qid }}</span></p>
<form id="answer-form" method="post" action="/answer">
{{ session_revision_field() }}
<input id="answer" name="answer" type="text">
<button id="submit" type="submit">answer</button>
</form>
<form method="post" action="/exam/next"><button id="next" type="submit">next</button></form>
{% endif %}
<p>Render <span id="render">{{ render }}</span>, revision
<span id="revision">{{ session_revision() }}</span>, shown from
<span id="shown-from">network</span></p>
<script>
addEventListener("pageshow", (event) => {
  if (event.persisted) document.getElementById("shown-from").textContent = "bfcache";
});
</script>
</body></html>
"""


def _exam_pages(app: Flask) -> None:
    """The seed's pages: the question with its answer form, "next", the answers read back."""
    from flask import jsonify, redirect, render_template_string, request, session

    @app.get("/exam")
    def exam_page() -> str:
        ids = session.get("exam_question_ids", [])
        current = session.get("exam_current", 0)
        return render_template_string(
            _EXAM_PAGE,
            qid=current_qid(session),
            shown=current + 1,
            total=len(ids),
            count=EXAM_QUESTIONS,
            stale=request.args.get("stale") == "1",
            render=next(_RENDERS),
        )

    def to_page() -> Any:
        # The question's number in the URL, for the history (the page still shows the
        # session's question): Chromium keeps no back-forward copy of a page left for the
        # same URL, and its HTTP cache keeps one copy per URL.
        return redirect(f"/exam?q={session.get('exam_current', 0) + 1}", code=303)

    @app.post("/exam/start/<int:count>")
    def exam_start(count: int) -> Any:
        start_exam(session, count)
        session["exam_answers"] = {}
        return to_page()

    @app.post("/exam/next")
    def exam_next() -> Any:
        next_question(session)
        return to_page()

    @app.post("/answer")
    def answer() -> Any:
        # Policy "flag" runs the handler for a stale page: the app refuses it itself.
        if sessionlock.is_stale(request):
            return redirect("/exam?stale=1", code=303)
        record_answer(session, request.form.get("answer", ""))
        return to_page()

    @app.get("/answers")
    def answers() -> Any:
        return jsonify(
            answers=session.get("exam_answers", {}),
            current_qid=current_qid(session),
        )


def flask_app_stale_pages(*, bare: bool = False, **stale_pages: Any) -> Any:
    """The Flask exam app with ``stale_pages=StalePages(**stale_pages)``; ``bare``: no SessionLock.

    Literal arguments only, for gunicorn:
    ``'tests.e2e.exam_app:flask_app_stale_pages(policy="refuse", no_store=False)'``.
    """
    if bare:
        return flask_app(rules=None)
    from sessionlock.stale import StalePages

    return flask_app(stale_pages=StalePages(**stale_pages))


# -- Flask on a server-side session -----------------------------------------------------

SID_COOKIE = "sid"


def _server_side_session_interface() -> Any:
    """Flask-Session's model in a few lines: a session is a dict in this process's memory,
    keyed by a random ``sid`` cookie that a browser's first response sets and no later one
    changes. Flask marks the session ``modified`` when the app writes to it, and the Flask
    adapter reports that to the middleware (as it does for Flask-Session)."""
    from flask.sessions import SecureCookieSession, SessionInterface

    class ServerSideSession(SecureCookieSession):  # its dict tracks writes in ``modified``
        sid = ""
        new = False

    class ServerSideSessions(SessionInterface):
        def __init__(self) -> None:
            self.store: dict[str, dict[str, Any]] = {}
            self.lock = threading.Lock()

        def open_session(self, app: Any, request: Any) -> ServerSideSession:
            sid = request.cookies.get(SID_COOKIE)
            with self.lock:
                data = copy.deepcopy(self.store.get(sid, {})) if sid else {}
            session = ServerSideSession(data)
            session.sid = sid or secrets.token_urlsafe(16)
            session.new = not sid
            return session

        def save_session(self, app: Any, session: Any, response: Any) -> None:
            if session.modified:
                with self.lock:
                    self.store[session.sid] = copy.deepcopy(dict(session))
            if session.new:  # set once: no later response touches the cookie
                response.set_cookie(SID_COOKIE, session.sid, httponly=True, samesite="Lax")

    return ServerSideSessions()


def _without_cookie(app: Any, name: str) -> Any:
    """A WSGI wrapper that drops every ``Set-Cookie`` of cookie ``name`` from the responses."""
    prefix = name + "="

    def wrapper(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [
                (header, value)
                for header, value in headers
                if not (header.lower() == "set-cookie" and value.lstrip().startswith(prefix))
            ]
            return start_response(status, kept, exc_info)

        return app(environ, start)

    return wrapper


def flask_app_stale_pages_server_side(
    *, strip_eviction_cookie: bool = False, **stale_pages: Any
) -> Any:
    """The Flask exam app on a server-side session, with ``key="cookie:sid"``,
    ``cookie_session=None`` and ``stale_pages=StalePages(**stale_pages)``.

    ``strip_eviction_cookie``: the control, the same app with the middleware's
    ``sessionlock_rev`` cookie removed from every response (by a wrapper outside the app),
    so that no cookie changes after the browser's first response.
    """
    from sessionlock.stale import EVICTION_COOKIE, StalePages

    app = flask_app(
        key=f"cookie:{SID_COOKIE}", cookie_session=None, stale_pages=StalePages(**stale_pages)
    )
    app.session_interface = _server_side_session_interface()
    if strip_eviction_cookie:
        return _without_cookie(app, EVICTION_COOKIE)
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
